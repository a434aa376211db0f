"""`prunescope analyze` end to end: discovery, outputs, comparison, reuse, bad input, exit status."""

import json
import os
import subprocess
import sys

import pytest
import torch

import builders
from oracle import count, expected_structure
from prunescope.batch import run_batch
from prunescope.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "prunescope", *args], capture_output=True, text=True, cwd=cwd)


def load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture
def batch(tmp_path):
    """A models folder in the shape researchers have them, plus the base model outside it."""
    base = builders.llama(num_hidden_layers=6)
    base.save_pretrained(tmp_path / "base")
    models = tmp_path / "baselines"
    models.mkdir()
    built = {}

    magnitude = builders.llama(num_hidden_layers=6)
    magnitude.load_state_dict(base.state_dict())
    with torch.no_grad():
        weight = magnitude.model.layers[0].mlp.up_proj.weight
        weight[weight.abs() < weight.abs().median()] = 0
    magnitude.save_pretrained(models / "Magnitude_5000" / "pruned_model")
    built["Magnitude_5000"] = magnitude

    shortgpt = builders.llama(num_hidden_layers=6)
    shortgpt.load_state_dict(base.state_dict())
    builders.remove_layers(shortgpt, [2, 4])
    shortgpt.save_pretrained(models / "ShortGPT_remove_2")
    built["ShortGPT_remove_2"] = shortgpt

    pruner = builders.llama(num_hidden_layers=6)
    pruner.load_state_dict(base.state_dict())
    builders.prune_structurally(pruner, {1: (2, 1, 48), 2: (3, 2, 64)})
    log = models / "LLM-Pruner_20" / "prune_log" / "llama_prune"
    log.mkdir(parents=True)
    torch.save({"model": pruner.half(), "tokenizer": None}, log / "pytorch_model.bin")
    (log / "description.txt").write_text("LLM-Pruner run")
    built["LLM-Pruner_20"] = pruner

    results_only = models / "Llama-3-8B-Instruct"
    results_only.mkdir()
    (results_only / "results_2026-01-01T00-00-00.json").write_text(json.dumps({"results": {"piqa": {"acc,none": 0.8}}}))
    (results_only / "tokenizer.json").write_text("{}")
    return tmp_path, models, built, base


def test_batch_writes_the_spec_outputs_with_exact_numbers(batch):
    tmp_path, models, built, base = batch
    out = tmp_path / "out"
    result = run_cli("analyze", "--models_dir", str(models), "--base_model", str(tmp_path / "base"),
                     "--output_dir", str(out), "--merge_results")
    assert result.returncode == 0, result.stdout + result.stderr
    records = {record["name"]: record for record in load(out / "batch_analysis_results.json")["models"]}
    assert records["Llama-3-8B-Instruct"]["status"] == "skipped"
    assert "evaluation results" in records["Llama-3-8B-Instruct"]["reason"]
    assert records["LLM-Pruner_20"]["kind"] == "torch"
    for name, model in built.items():
        assert records[name]["status"] == "analysed"
        folder = models / name / "analysis"
        structure = load(folder / "model_structure.json")
        expected = expected_structure(model)
        assert structure["total_params"] == expected["total_params"]
        assert [layer["total"] for layer in structure["layers"]] == [layer["total"] for layer in expected["layers"]]
        comparison = load(folder / "model_comparison.json")
        assert comparison["original_name"] == "base"
        assert comparison["total_params"]["original"] == base.num_parameters()
        assert comparison["total_params"]["pruned"] == model.num_parameters()
        assert comparison["total_params"]["reduced"] == base.num_parameters() - model.num_parameters()
        assert comparison["total_params"]["reduction_ratio"] == pytest.approx(
            (base.num_parameters() - model.num_parameters()) / base.num_parameters())
        assert (folder / "structure_summary.txt").read_text().startswith(f"Model: {name}")
    pruner = load(models / "LLM-Pruner_20" / "analysis" / "model_comparison.json")
    layer1 = pruner["layers"][1]
    assert layer1["attention"]["num_heads"] == {"original": 4, "pruned": 2, "reduced": 2, "reduction_ratio": 0.5}
    assert layer1["mlp"]["gate_proj"]["pruned"] == count(built["LLM-Pruner_20"].model.layers[1].mlp.gate_proj)
    shortgpt = load(models / "ShortGPT_remove_2" / "analysis" / "model_comparison.json")
    assert shortgpt["layer_matching"]["method"] == "content"
    assert shortgpt["layer_matching"]["removed_original_layers"] == [2, 4]
    assert [layer["original_layer_idx"] for layer in shortgpt["layers"]] == [0, 1, 3, 5]
    summary = load(out / "models_summary.json")
    assert {model["name"] for model in summary["models"]} == set(built)
    for model in summary["models"]:
        assert set(model) >= {"name", "total_params", "num_layers", "layer_params", "embedding_params",
                              "lm_head_params", "pruning"}
        assert model["pruning"]["pruned_params"] == built[model["name"]].num_parameters()
    assert "Next steps" in result.stdout and "Llama-3-8B-Instruct" in result.stdout


def test_removed_layers_without_a_content_match_are_paired_by_position_and_say_so(tmp_path):
    base = builders.llama(num_hidden_layers=6)
    base.save_pretrained(tmp_path / "base")
    retrained = builders.llama(num_hidden_layers=6)  # different weights: no layer matches the base
    builders.remove_layers(retrained, [0, 1])
    retrained.save_pretrained(tmp_path / "models" / "pruned")
    assert run_batch(str(tmp_path / "models"), base_model=str(tmp_path / "base"), output_dir=str(tmp_path / "out")) == 0
    comparison = load(tmp_path / "models" / "pruned" / "analysis" / "model_comparison.json")
    assert comparison["layer_matching"]["method"] == "index"
    assert "guess" in comparison["layer_matching"]["note"]
    assert [layer["original_layer_idx"] for layer in comparison["layers"]] == [0, 1, 2, 3]


def test_changed_layers_between_matched_ones_are_flagged(tmp_path):
    base = builders.llama(num_hidden_layers=6)
    base.save_pretrained(tmp_path / "base")
    merged = builders.llama(num_hidden_layers=6)
    merged.load_state_dict(base.state_dict())
    with torch.no_grad():  # LaCo-style: layer 2 absorbs layer 3, which is removed
        merged.model.layers[2].mlp.up_proj.weight.add_(merged.model.layers[3].mlp.up_proj.weight)
    builders.remove_layers(merged, [3])
    merged.save_pretrained(tmp_path / "models" / "laco")
    assert run_batch(str(tmp_path / "models"), base_model=str(tmp_path / "base"), output_dir=str(tmp_path / "out")) == 0
    comparison = load(tmp_path / "models" / "laco" / "analysis" / "model_comparison.json")
    matching = comparison["layer_matching"]
    assert matching["method"] == "content"
    assert "layers [2] changed" in matching["note"]
    assert [layer["original_layer_idx"] for layer in comparison["layers"]] == [0, 1, 2, 4, 5]
    assert matching["removed_original_layers"] == [3]


def test_reuse_force_and_changed_checkpoint(batch, capsys):
    tmp_path, models, built, _ = batch
    out = str(tmp_path / "out")
    assert run_batch(str(models), output_dir=out, include=["ShortGPT*"]) == 0
    first = capsys.readouterr().out
    assert "reused" not in first
    assert run_batch(str(models), output_dir=out, include=["ShortGPT*"]) == 0
    assert "up to date, reused" in capsys.readouterr().out
    assert run_batch(str(models), output_dir=out, include=["ShortGPT*"], force=True) == 0
    assert "reused" not in capsys.readouterr().out
    # A re-saved checkpoint is analysed again.
    model = built["ShortGPT_remove_2"]
    builders.remove_layers(model, [0])
    model.save_pretrained(models / "ShortGPT_remove_2")
    os.utime(models / "ShortGPT_remove_2" / "model.safetensors", ns=(1, 1))
    assert run_batch(str(models), output_dir=out, include=["ShortGPT*"]) == 0
    assert "reused" not in capsys.readouterr().out
    assert load(models / "ShortGPT_remove_2" / "analysis" / "model_structure.json")["layer_summary"]["num_layers"] == 3


def test_dashed_flags_default_command_include_exclude(batch):
    tmp_path, models, _, _ = batch
    out = tmp_path / "out"
    result = run_cli("--models-dir", str(models), "--output-dir", str(out), "--exclude", "LLM*", "--exclude", "Short*",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    names = [record["name"] for record in load(out / "batch_analysis_results.json")["models"]]
    assert names == ["Llama-3-8B-Instruct", "Magnitude_5000"]


def test_symlinked_selection_and_loops(batch):
    tmp_path, models, built, _ = batch
    selection = tmp_path / "temp_models"
    selection.mkdir()
    (selection / "Magnitude_5000").symlink_to(models / "Magnitude_5000")
    (models / "Magnitude_5000" / "loop").symlink_to(models / "Magnitude_5000")
    (selection / "dangling").symlink_to(tmp_path / "nowhere")
    out = tmp_path / "out"
    assert main(["analyze", "--models_dir", str(selection), "--output_dir", str(out)]) == 1
    records = {record["name"]: record for record in load(out / "batch_analysis_results.json")["models"]}
    assert records["Magnitude_5000"]["status"] == "analysed"
    assert records["Magnitude_5000"]["total_params"] == built["Magnitude_5000"].num_parameters()
    assert records["dangling"]["status"] == "error"
    assert "is a symlink to nothing" in records["dangling"]["error"]


def test_bad_inputs_are_one_line_each_and_the_batch_goes_on(tmp_path):
    models = tmp_path / "models"
    good = builders.llama()
    good.save_pretrained(models / "good")
    broken = {}
    good.save_pretrained(models / "truncated")
    data = (models / "truncated" / "model.safetensors").read_bytes()
    (models / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    broken["truncated"] = "truncated"
    good.save_pretrained(models / "lying_header")
    path = models / "lying_header" / "model.safetensors"
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    name = next(key for key in header if key != "__metadata__")
    header[name]["shape"][0] += 1
    text = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    assert len(text) == size
    path.write_bytes(bytes(data[:8]) + text + bytes(data[8 + size:]))
    broken["lying_header"] = "header lies"
    good.save_pretrained(models / "missing_shard", max_shard_size="40KB")
    sorted((models / "missing_shard").glob("model-*.safetensors"))[1].unlink()
    broken["missing_shard"] = "missing shard"
    (models / "garbage").mkdir()
    (models / "garbage" / "pytorch_model.bin").write_bytes(b"not a checkpoint at all")
    broken["garbage"] = "not a torch.save file"
    (models / "config_only").mkdir()
    (models / "config_only" / "config.json").write_text(json.dumps(good.config.to_dict()))

    out = tmp_path / "out"
    result = run_cli("analyze", "--models_dir", str(models), "--output_dir", str(out))
    assert result.returncode == 1
    records = {record["name"]: record for record in load(out / "batch_analysis_results.json")["models"]}
    assert records["good"]["status"] == "analysed"
    assert records["config_only"]["status"] == "skipped"
    assert records["config_only"]["reason"] == "config.json without weight files"
    for name, problem in broken.items():
        assert records[name]["status"] == "error", name
        assert problem in records[name]["error"], (name, records[name]["error"])
        assert "\n" not in records[name]["error"]
        assert str(models / name) in records[name]["error"]  # names the file
        assert not (models / name / "analysis").exists()
        lines = [line for line in result.stdout.splitlines() if f"✗ {name}:" in line]
        assert len(lines) == 1
    leftovers = [path for path in tmp_path.rglob(".tmp-*")]
    assert leftovers == []


def test_unwritable_model_folder_falls_back_to_output_dir(batch, monkeypatch, capsys):
    tmp_path, models, built, _ = batch
    import prunescope.atomic as atomic

    real = atomic.write_atomic

    def refuse_model_folders(path, text):
        if str(models) in str(path):
            raise PermissionError(13, "Permission denied", path)
        return real(path, text)

    monkeypatch.setattr("prunescope.pipeline.write_atomic", refuse_model_folders)
    monkeypatch.setattr("prunescope.atomic.write_atomic", refuse_model_folders)
    out = tmp_path / "out"
    assert run_batch(str(models), output_dir=str(out), include=["Magnitude*"]) == 0
    assert "not writable" in capsys.readouterr().out
    structure = load(out / "Magnitude_5000" / "analysis" / "model_structure.json")
    assert structure["total_params"] == built["Magnitude_5000"].num_parameters()
    assert not (models / "Magnitude_5000" / "analysis").exists()


def test_inspect_prints_per_layer_table(batch):
    tmp_path, models, built, _ = batch
    result = run_cli("inspect", str(models / "LLM-Pruner_20"))
    assert result.returncode == 0, result.stderr
    assert "layer" in result.stdout and "heads" in result.stdout
    result = run_cli("inspect", str(models / "LLM-Pruner_20" / "prune_log" / "llama_prune" / "pytorch_model.bin"),
                     "--json")
    data = json.loads(result.stdout)
    assert data["total_params"] == built["LLM-Pruner_20"].num_parameters()
    assert not (models / "LLM-Pruner_20" / "analysis").exists()  # inspect writes nothing


def test_slicegpt_is_recognised_not_mistaken(tmp_path):
    models = tmp_path / "models"
    folder = models / "SliceGPT_25"
    folder.mkdir(parents=True)
    model = builders.llama()
    torch.save(model.state_dict(), folder / "llama_0.25.pt")
    (folder / "llama_0.25.json").write_text(json.dumps({"layers_num": 4, "embedding_dimensions": {"0": 48},
                                                         "hidden_size": 64}))
    (folder / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "out"
    run_cli("analyze", "--models_dir", str(models), "--output_dir", str(out))
    record = load(out / "batch_analysis_results.json")["models"][0]
    assert record["kind"] == "slicegpt"


def test_models_given_by_path_alone_and_listed_once(batch):
    tmp_path, models, built, _ = batch
    out = tmp_path / "out"
    magnitude = str(models / "Magnitude_5000")
    result = run_cli("analyze", "--model", magnitude, "--model", magnitude + "/", "--output_dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    records = load(out / "batch_analysis_results.json")["models"]
    assert [record["name"] for record in records] == ["Magnitude_5000"]
    assert records[0]["total_params"] == built["Magnitude_5000"].num_parameters()
    assert run_cli("analyze", "--output_dir", str(out)).returncode == 2  # neither a folder nor a model


def test_a_base_of_another_family_is_questioned(tmp_path):
    base = builders.qwen2()
    base.save_pretrained(tmp_path / "base")
    builders.llama(hidden_size=32, num_attention_heads=2, num_key_value_heads=1).save_pretrained(tmp_path / "m" / "x")
    result = run_cli("inspect", str(tmp_path / "m" / "x"), "--base_model", str(tmp_path / "base"), "--json")
    comparison = json.loads(result.stdout)["comparison"]
    assert any("qwen2 model" in warning for warning in comparison["warnings"])
    assert any("hidden size 32" in warning for warning in comparison["warnings"])
    text = run_cli("inspect", str(tmp_path / "m" / "x"), "--base_model", str(tmp_path / "base")).stdout
    assert "is this the right base?" in text


def test_inspect_shows_base_layers_and_heads_zeroed_in_place(tmp_path):
    base = builders.llama(num_hidden_layers=5)
    base.save_pretrained(tmp_path / "base")
    pruned = builders.llama(num_hidden_layers=5)
    pruned.load_state_dict(base.state_dict())
    with torch.no_grad():
        pruned.model.layers[0].self_attn.q_proj.weight[:16] = 0
        pruned.model.layers[0].self_attn.o_proj.weight[:, :16] = 0
    builders.remove_layers(pruned, [1, 3])
    pruned.save_pretrained(tmp_path / "pruned")
    text = run_cli("inspect", str(tmp_path / "pruned"), "--base_model", str(tmp_path / "base"), "--sparsity",
                   "--device", "cpu").stdout
    table = text[text.index("layer  base"):].splitlines()
    assert [line.split()[:2] for line in table[2:5]] == [["0", "0"], ["1", "2"], ["2", "4"]]
    assert table[2].split()[8] == "3/4"  # the heads column: one of four heads zeroed in place


def test_bad_output_places_and_outputs_among_the_models(tmp_path):
    models = tmp_path / "models"
    builders.llama().save_pretrained(models / "m")
    (tmp_path / "afile").write_text("x")
    result = run_cli("analyze", "--models_dir", str(models), "--output_dir", str(tmp_path / "afile"))
    assert result.returncode == 1 and "is a file" in result.stdout and "Traceback" not in result.stderr
    result = run_cli("demo", str(tmp_path / "afile"))
    assert result.returncode == 1 and "cannot write the demo" in result.stdout and "Traceback" not in result.stderr
    # --output_dir inside --models_dir: a second run does not take prunescope's own files for models.
    for _ in range(2):
        assert run_cli("analyze", "--models_dir", str(models), "--output_dir", str(models / "out"),
                       "--merge_results").returncode == 0
    assert [r["name"] for r in load(models / "out" / "batch_analysis_results.json")["models"]] == ["m"]
    # ... nor a symlink among the models that leads to them (recognised by identity, not by name)
    os.symlink(models / "out", models / "results_link")
    os.symlink(models / "out" / "batch_analysis_results.json", models / "batch_link.json")
    assert run_cli("analyze", "--models_dir", str(models), "--output_dir", str(models / "out")).returncode == 0
    assert [r["name"] for r in load(models / "out" / "batch_analysis_results.json")["models"]] == ["m"]
    # an analysis file that is valid JSON but not an analysis is redone, not an internal error
    (models / "m" / "analysis" / "model_structure.json").write_text("[]")
    assert run_cli("analyze", "--models_dir", str(models), "--output_dir", str(models / "out")).returncode == 0


def test_outputs_are_rewritten_only_when_they_change(tmp_path):
    """An output already holding the same bytes is left alone (re-analysing unchanged models with --force
    rewrites nothing); different bytes replace it whole; a FIFO in its place does not block the write."""
    from prunescope.atomic import write_atomic

    path = tmp_path / "model_structure.json"
    write_atomic(str(path), "{}\n")
    before = os.stat(path)
    os.utime(path, ns=(1, 1))
    write_atomic(str(path), "{}\n")
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, 1)
    write_atomic(str(path), "{\"a\": 1}\n")
    assert path.read_text() == '{"a": 1}\n' and os.stat(path).st_mtime_ns != 1
    write_atomic(str(path), "é\udcff")  # a name that is not valid UTF-8 is written, not refused
    assert path.read_bytes() == "é\\udcff".encode()
    fifo = tmp_path / "summary.txt"
    os.mkfifo(fifo)
    write_atomic(str(fifo), "text")
    assert fifo.read_text() == "text"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_header_path_loads_only_what_it_uses(batch):
    """Start-up time counts (benchmarks/bench_analyze.py): without --base_model the comparison module
    is not loaded, nor SliceGPT's, nor typing, dataclasses or tempfile; with a base, compare is."""
    code = ("import sys; from prunescope.cli import main; status = main(sys.argv[1:]); "
            "print(sorted(name for name in ('prunescope.compare', 'prunescope.interpret.slicing', 'typing', "
            "'dataclasses', 'tempfile', 'numpy', 'torch') if name in sys.modules))")
    root, models, _, _ = batch
    plain = subprocess.run([sys.executable, "-c", code, "analyze", "--models_dir", str(models), "--force",
                            "--output_dir", str(root / "out")], capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip().splitlines()[-1] == "[]"
    compared = subprocess.run([sys.executable, "-c", code, "analyze", "--models_dir", str(models),
                               "--base_model", str(root / "base"),
                               "--output_dir", str(root / "out")], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stderr
    assert compared.stdout.strip().splitlines()[-1] == "['prunescope.compare']"
