"""The bundled demo: README's first command. Its numbers are checked against the files' own tensors."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from oracle import assert_matches


def test_demo_runs_and_its_numbers_are_exact(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prunescope", "demo", str(tmp_path / "demo")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    models = tmp_path / "demo" / "models"
    summary = json.loads((tmp_path / "demo" / "baselines_analysis" / "models_summary.json").read_text())
    totals = {model["name"]: model["total_params"] for model in summary["models"]}
    assert set(totals) == {"LLM-Pruner_block_20", "Magnitude_5000", "ShortGPT_remove_2", "ZeroLayer_3"}
    for name, folder in (("Magnitude_5000", models / "Magnitude_5000" / "pruned_model"),
                         ("ShortGPT_remove_2", models / "ShortGPT_remove_2"), ("ZeroLayer_3", models / "ZeroLayer_3")):
        tensors = load_file(folder / "model.safetensors")
        assert totals[name] == sum(tensor.numel() for tensor in tensors.values())
    zero = json.loads((models / "ZeroLayer_3" / "analysis" / "model_structure.json").read_text())
    assert [layer["layer_idx"] for layer in zero["layers"] if layer["is_zero_layer"]] == [3]
    # The oracle loads the pickled module: it is our own bundled file, written by scripts/make_demo.py.
    saved = torch.load(models / "LLM-Pruner_block_20" / "prune_log" / "llama_prune" / "pytorch_model.bin",
                       weights_only=False)
    structure = json.loads((models / "LLM-Pruner_block_20" / "analysis" / "model_structure.json").read_text())
    assert_matches(structure, saved["model"])
    assert "Llama-demo-eval" in result.stdout and "skipped" in result.stdout


def test_demo_moe_study_names_the_removed_experts(tmp_path):
    subprocess.run([sys.executable, "-m", "prunescope", "demo", str(tmp_path / "demo")], capture_output=True,
                   check=True)
    folder = tmp_path / "demo" / "moe" / "models" / "Mixtral-experts_6-8-4"
    structure = json.loads((folder / "analysis" / "model_structure.json").read_text())
    comparison = json.loads((folder / "analysis" / "model_comparison.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    assert structure["total_params"] == sum(tensor.numel() for tensor in tensors.values())
    experts = [len({name.split(".")[5] for name in tensors if f"layers.{i}.block_sparse_moe.experts." in name})
               for i in range(3)]
    assert structure["num_experts"] == experts == [6, 8, 4]
    # scripts/make_demo.py kept experts [0, 1, 2, 4, 5, 7] of layer 0 and [1, 3, 6, 7] of layer 2
    assert comparison["removed_experts"] == {"0": [3, 6], "1": [], "2": [0, 2, 4, 5]}
    assert "experts 8 → 6/8/4 per layer" in (folder / "analysis" / "structure_summary.txt").read_text()
