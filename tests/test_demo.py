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
