"""Layouts and leftovers that real pruning folders have, each checked against the module's own counts."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import builders
from oracle import assert_matches
from prunescope.batch import run_batch
from prunescope.discover import examine
from prunescope.pipeline import analyse_path
from prunescope.schema import structure_to_dict
from prunescope.tensors import CheckpointError


def analysed(path, base_config=None) -> dict:
    return structure_to_dict(analyse_path(str(path), base_config).structure)


def load(path):
    return json.loads(open(path, encoding="utf-8").read())


def test_merged_model_with_its_adapter_left_beside_it(tmp_path):
    model = builders.llama()
    model.save_pretrained(tmp_path / "merged")
    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
              tmp_path / "merged" / "adapter_model.safetensors")
    (tmp_path / "merged" / "adapter_config.json").write_text("{}")
    assert_matches(analysed(tmp_path / "merged"), model)


def test_adapter_only_and_trainer_leftovers_are_skipped_not_failed(tmp_path):
    models = tmp_path / "models"
    (models / "lora_run").mkdir(parents=True)
    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
              models / "lora_run" / "adapter_model.safetensors")
    trainer = models / "tuned" / "checkpoint-200"
    trainer.mkdir(parents=True)
    for name in ("rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "scheduler.pt"):
        torch.save({"state": torch.zeros(3)}, trainer / name)
    assert run_batch(str(models), output_dir=str(tmp_path / "out")) == 0
    records = {r["name"]: r for r in load(tmp_path / "out" / "batch_analysis_results.json")["models"]}
    assert records["lora_run"]["status"] == "skipped" and "adapter" in records["lora_run"]["reason"]
    assert records["tuned"]["status"] == "skipped"


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_shards_with_an_index_but_no_config_are_one_model(tmp_path, safe):
    model = builders.llama()
    if safe:
        model.save_pretrained(tmp_path / "model", max_shard_size="40KB")
        os.unlink(tmp_path / "model" / "config.json")
    else:  # older transformers' sharded pytorch_model-*.bin with its index (transformers 5 writes safetensors only)
        (tmp_path / "model").mkdir()
        names = list(model.state_dict())
        halves = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
                  "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
        state = model.state_dict()
        for shard, keys in halves.items():
            torch.save({key: state[key] for key in keys}, tmp_path / "model" / shard)
        weight_map = {key: shard for shard, keys in halves.items() for key in keys}
        (tmp_path / "model" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    entries = examine(str(tmp_path / "model"), "model")
    assert len(entries) == 1 and entries[0].checkpoint is not None
    assert_matches(analysed(tmp_path / "model", model.config.to_dict()), model)


def test_tied_lm_head_first_in_a_sorted_state_dict(tmp_path):
    model = builders.gemma()  # Gemma ties its embeddings
    state = dict(sorted(model.state_dict().items()))  # lm_head.weight now comes before model.embed_tokens
    assert next(iter(state)) == "lm_head.weight"
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    structure = analysed(tmp_path)
    assert_matches(structure, model)
    assert structure["embedding_params"] == model.model.embed_tokens.weight.numel()


def test_quantized_checkpoints_are_refused_in_one_line(tmp_path):
    model = builders.llama()
    state = {name: tensor for name, tensor in model.state_dict().items()}
    state["model.layers.0.self_attn.q_proj.qweight"] = torch.zeros(8, 64, dtype=torch.int32)
    torch.save(state, tmp_path / "gptq.bin")
    with pytest.raises(CheckpointError, match="quantized checkpoint"):
        analyse_path(str(tmp_path / "gptq.bin"), model.config.to_dict())


def test_updated_head_counts_without_head_dim_are_flagged_as_a_guess(tmp_path):
    # torch-pruning keeps hidden_size, updates num_attention_heads; an old config has no head_dim.
    model = builders.llama(num_attention_heads=4, num_key_value_heads=4, head_dim=16)
    builders.prune_structurally(model, {i: (2, 2, 96) for i in range(4)})
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config.update(num_attention_heads=2, num_key_value_heads=2)
    config.pop("head_dim")
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    structure = analysed(tmp_path / "model")
    assert any("head_dim 32 is a guess" in note for note in structure["notes"])
    assert_matches(analysed(tmp_path / "model", base_config={"head_dim": 16}), model, head_dim=16)


def test_unknown_family_totals_stay_exact_and_are_noted(tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM

    model = MixtralForCausalLM(MixtralConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                             num_key_value_heads=2, num_hidden_layers=2, vocab_size=64,
                                             num_local_experts=2, num_experts_per_tok=1)).eval()
    model.save_pretrained(tmp_path / "moe")
    # A family prunescope has no table for (Mixtral has one now): the config names a new model type.
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    config.update(model_type="mixtral_next", architectures=["MixtralNextForCausalLM"])
    (tmp_path / "moe" / "config.json").write_text(json.dumps(config))
    structure = analysed(tmp_path / "moe")
    assert structure["total_params"] == model.num_parameters()
    for got, layer in zip(structure["layers"], model.model.layers, strict=True):
        assert got["total"] == sum(p.numel() for p in layer.parameters())
    assert any("not one prunescope knows" in note for note in structure["notes"])
    assert not [m for m in structure["config_mismatches"] if m["field"] == "intermediate_size"]


def test_opt_with_a_projected_embedding_reports_the_residual_width(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(hidden_size=64, word_embed_proj_dim=32, ffn_dim=96, num_attention_heads=4,
                                     num_hidden_layers=2, vocab_size=64, max_position_embeddings=32,
                                     do_layer_norm_before=False)).eval()
    model.save_pretrained(tmp_path / "opt350m")
    structure = analysed(tmp_path / "opt350m")
    assert structure["total_params"] == model.num_parameters()
    assert structure["hidden_size"] == model.config.hidden_size
    assert not [m for m in structure["config_mismatches"] if m["field"] == "hidden_size"]


def test_reuse_follows_the_base_config_where_it_decides_head_dim(tmp_path, capsys):
    base = builders.llama(head_dim=16)
    base.save_pretrained(tmp_path / "base")
    models = tmp_path / "models"
    (models / "statedict_only").mkdir(parents=True)
    torch.save(base.state_dict(), models / "statedict_only" / "pruned_model.bin")  # no config: heads need a base
    out = str(tmp_path / "out")
    assert run_batch(str(models), output_dir=out) == 0
    first = load(models / "statedict_only" / "analysis" / "model_structure.json")
    assert first["head_dim"] is None
    capsys.readouterr()
    assert run_batch(str(models), base_model=str(tmp_path / "base"), output_dir=out) == 0
    assert "reused" not in capsys.readouterr().out  # the base decides head_dim: analysed again
    second = load(models / "statedict_only" / "analysis" / "model_structure.json")
    assert second["head_dim"] == 16 and second["layers"][0]["attention"]["num_heads"] == 4


def test_a_run_without_base_leaves_an_earlier_comparison_and_summary_as_they_were(tmp_path, capsys):
    base = builders.llama()
    base.save_pretrained(tmp_path / "base")
    models = tmp_path / "models"
    pruned = builders.llama()
    builders.prune_structurally(pruned, {0: (2, 1, 48)})
    pruned.save_pretrained(models / "pruned")
    out = str(tmp_path / "out")
    assert run_batch(str(models), base_model=str(tmp_path / "base"), output_dir=out) == 0
    folder = models / "pruned" / "analysis"
    before = [(folder / name).read_text() for name in sorted(os.listdir(folder))]
    capsys.readouterr()
    assert run_batch(str(models), output_dir=out, merge=True) == 0  # the original's "merge" step
    assert "up to date, reused" in capsys.readouterr().out
    assert [(folder / name).read_text() for name in sorted(os.listdir(folder))] == before
    summary = load(tmp_path / "out" / "models_summary.json")
    assert summary["models"][0]["pruning"]["original_params"] == base.num_parameters()


def test_same_models_through_a_folder_of_symlinks_reuse_the_analysis(tmp_path, capsys):
    model = builders.llama()
    model.save_pretrained(tmp_path / "models" / "pruned")
    (tmp_path / "selection").mkdir()
    (tmp_path / "selection" / "pruned").symlink_to(tmp_path / "models" / "pruned")
    assert run_batch(str(tmp_path / "models"), output_dir=str(tmp_path / "out")) == 0
    capsys.readouterr()
    assert run_batch(str(tmp_path / "selection"), output_dir=str(tmp_path / "out")) == 0
    assert "up to date, reused" in capsys.readouterr().out


def test_a_folder_name_that_is_not_utf8_does_not_abort_the_batch(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    odd = os.path.join(os.fsencode(models), b"Llama-pruned-\xe9")
    os.mkdir(odd)
    builders.llama().save_pretrained(os.fsdecode(odd))
    builders.llama().save_pretrained(models / "ok_model")
    assert run_batch(str(models), output_dir=str(tmp_path / "out")) == 0
    records = load(tmp_path / "out" / "batch_analysis_results.json")["models"]
    assert [record["status"] for record in records] == ["analysed", "analysed"]


def test_a_payload_in_a_file_that_is_not_a_model_is_still_reported(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'SENTINEL'}",)

    torch.save({"x": torch.zeros(2), "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="SECURITY: it references posix.system"):
        analyse_path(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "SENTINEL").exists()
