"""Every count prunescope reports equals the count of the module that was written to disk."""

import json

import pytest
import torch

import builders
from oracle import assert_matches, expected_structure, zero_layer_
from prunescope.pipeline import analyse_path
from prunescope.schema import structure_to_dict


def analysed(path, base_config=None) -> dict:
    return structure_to_dict(analyse_path(str(path), base_config).structure)


@pytest.mark.parametrize("build", [builders.llama, builders.mistral, builders.qwen2, builders.qwen3,
                                   builders.gemma, builders.gemma2], ids=lambda f: f.__name__)
def test_save_pretrained_families(tmp_path, build):
    model = build()
    model.save_pretrained(tmp_path / "model")
    structure = analysed(tmp_path / "model")
    assert_matches(structure, model)
    assert structure["config_mismatches"] == []


def test_qwen3_qk_norms_count_in_attention(tmp_path):
    model = builders.qwen3()
    model.save_pretrained(tmp_path / "model")
    layer = analysed(tmp_path / "model")["layers"][0]
    attention = model.model.layers[0].self_attn
    assert layer["attention"]["qk_norm"] == attention.q_norm.weight.numel() + attention.k_norm.weight.numel()


def test_sharded_save_pretrained(tmp_path):
    model = builders.llama()
    model.save_pretrained(tmp_path / "model", max_shard_size="40KB")
    assert len(list((tmp_path / "model").glob("*.safetensors"))) > 2
    assert_matches(analysed(tmp_path / "model"), model)


def test_bf16_state_dict_without_config(tmp_path):
    model = builders.llama().to(torch.bfloat16)
    torch.save(model.state_dict(), tmp_path / "pruned_model.bin")
    # No config beside the file: head_dim comes from the base model's config.
    structure = analysed(tmp_path / "pruned_model.bin", base_config=model.config.to_dict())
    assert_matches(structure, model)
    assert structure["dtypes"] == {"BF16": model.num_parameters()}


def test_llm_pruner_whole_module_with_stale_config(tmp_path):
    model = builders.llama(num_attention_heads=8, num_key_value_heads=4, head_dim=8, intermediate_size=128)
    builders.prune_structurally(model, {0: (6, 4, 100), 1: (4, 2, 64), 3: (2, 1, 32)})
    model = model.half()
    folder = tmp_path / "prune_log" / "llama_prune"
    folder.mkdir(parents=True)
    torch.save({"model": model, "tokenizer": None}, folder / "pytorch_model.bin")
    analysis = analyse_path(str(folder))
    structure = structure_to_dict(analysis.structure)
    assert analysis.checkpoint.kind == "torch"
    assert_matches(structure, model)
    assert [layer["attention"]["num_heads"] for layer in structure["layers"]] == [6, 4, 8, 2]
    assert [layer["attention"]["type"] for layer in structure["layers"]] == ["LlamaAttention"] * 4
    stale = {mismatch["field"]: mismatch for mismatch in structure["config_mismatches"]}
    assert stale["num_attention_heads"]["layers"] == [0, 1, 3]
    assert stale["num_key_value_heads"]["layers"] == [1, 3]
    assert stale["intermediate_size"]["layers"] == [0, 1, 3]
    # The reader rebuilt exactly the dotted names of named_parameters(), tied or not.
    assert [t.name for t in analysis_index(folder / "pytorch_model.bin") if t.is_parameter and not t.alias_of] == \
        [name for name, _ in model.named_parameters()]


def analysis_index(path):
    from prunescope.readers import read_tensor_index

    return read_tensor_index([str(path)]).tensors


def test_legacy_format_whole_module_and_state_dict(tmp_path):
    model = builders.llama()
    builders.prune_structurally(model, {2: (2, 2, 48)})
    torch.save({"model": model, "tokenizer": None}, tmp_path / "whole.bin", _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), tmp_path / "state.bin", _use_new_zipfile_serialization=False)
    assert_matches(analysed(tmp_path / "whole.bin"), model)
    assert_matches(analysed(tmp_path / "state.bin", model.config.to_dict()), model)


def test_layers_removed_keep_stale_config(tmp_path):
    model = builders.llama(num_hidden_layers=6)
    builders.remove_layers(model, [1, 4])
    model.save_pretrained(tmp_path / "model")
    structure = analysed(tmp_path / "model")
    assert_matches(structure, model)
    mismatch = {m["field"]: m for m in structure["config_mismatches"]}["num_hidden_layers"]
    assert (mismatch["config"], mismatch["actual"]) == (model.config.num_hidden_layers, 4)


def test_zeroed_layers_including_negative_zero(tmp_path):
    model = builders.llama()
    zero_layer_(model.model.layers[1])
    zero_layer_(model.model.layers[3], negative=True)
    assert torch.signbit(model.model.layers[3].mlp.up_proj.weight).any()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        converted = model.to(dtype)
        converted.save_pretrained(tmp_path / str(dtype))
        structure = analysed(tmp_path / str(dtype))
        assert_matches(structure, converted)
        assert [layer["is_zero_layer"] for layer in structure["layers"]] == [False, True, False, True]


def test_single_nonzero_value_at_the_end_is_not_a_zero_layer(tmp_path):
    model = builders.llama()
    zero_layer_(model.model.layers[0])
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[-1, -1] = 1e-3
    model.save_pretrained(tmp_path / "model")
    structure = analysed(tmp_path / "model")
    assert structure["layers"][0]["is_zero_layer"] is False
    assert expected_structure(model)["layers"][0]["is_zero_layer"] is False


def test_qwen2_biases_and_tied_embeddings(tmp_path):
    model = builders.qwen2(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path / "hf")
    # A .bin state dict stores the tied tensor under both names: it must still count once.
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text(json.dumps(model.config.to_dict()))
    for folder in ("hf", "bin"):
        structure = analysed(tmp_path / folder)
        assert_matches(structure, model)
        assert structure["tied_embeddings"] is True
        assert structure["total_params"] == model.num_parameters()
        assert structure["layers"][0]["attention"]["q_proj"] == \
            model.model.layers[0].self_attn.q_proj.weight.numel() + model.model.layers[0].self_attn.q_proj.bias.numel()


def test_flap_biases_and_stale_heads(tmp_path):
    model = builders.llama()
    builders.prune_structurally(model, {0: (2, 2, 40), 1: (3, 1, 96)})
    builders.add_flap_biases(model)
    model.save_pretrained(tmp_path / "model")
    structure = analysed(tmp_path / "model")
    assert_matches(structure, model)
    fields = {m["field"] for m in structure["config_mismatches"]}
    assert {"num_attention_heads", "num_key_value_heads", "intermediate_size"} <= fields


def test_head_dim_not_from_hidden_over_heads_when_config_updated(tmp_path):
    # torch-pruning style: heads removed uniformly and the config updated, hidden size unchanged, and no
    # head_dim in the config: hidden/heads would give a wrong head_dim; the base config gives the right one.
    base = builders.llama(num_attention_heads=8, num_key_value_heads=8, head_dim=8)
    model = builders.llama(num_attention_heads=8, num_key_value_heads=8, head_dim=8)
    builders.prune_structurally(model, {i: (4, 4, 96) for i in range(4)})
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config.update(num_attention_heads=4, num_key_value_heads=4)  # 64 / 4 = 16: not the head_dim
    config.pop("head_dim", None)
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    structure = analysed(tmp_path / "model", base_config=base.config.to_dict())
    assert structure["head_dim"] == 8
    assert_matches(structure, model, head_dim=8)


def test_a_second_layer_stack_is_not_mixed_into_the_decoder(tmp_path):
    # A multimodal checkpoint also has `...layers.N` tensors in its vision tower: they are not decoder layers.
    model = builders.llama()
    state = dict(model.state_dict())
    vision = {f"vision_tower.encoder.layers.{i}.self_attn.q_proj.weight": torch.randn(8, 8) for i in range(2)}
    torch.save({**state, **vision}, tmp_path / "multimodal.bin")
    structure = analysed(tmp_path / "multimodal.bin", model.config.to_dict())
    assert_matches({**structure, "total_params": structure["total_params"] - structure["other_params"]}, model)
    assert structure["other_params"] == sum(tensor.numel() for tensor in vision.values())
    assert sorted(structure["other_tensors"]) == sorted(vision)
