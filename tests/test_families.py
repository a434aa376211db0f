"""OPT, Phi-2 and Phi-3, written by transformers' save_pretrained: counts equal the modules' own."""

import pytest
from transformers import OPTConfig, OPTForCausalLM, Phi3Config, Phi3ForCausalLM, PhiConfig, PhiForCausalLM

from oracle import count
from prunescope.pipeline import analyse_path
from prunescope.schema import structure_to_dict


def opt():
    return OPTForCausalLM(OPTConfig(hidden_size=32, ffn_dim=64, num_attention_heads=4, num_hidden_layers=3,
                                    vocab_size=64, max_position_embeddings=32, word_embed_proj_dim=32)).eval()


def phi2():
    return PhiForCausalLM(PhiConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                                    vocab_size=64, qk_layernorm=True, pad_token_id=0, bos_token_id=0,
                                    eos_token_id=0)).eval()


def phi3():
    return Phi3ForCausalLM(Phi3Config(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=3, vocab_size=64, pad_token_id=0,
                                      bos_token_id=0, eos_token_id=0)).eval()


def analysed(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    return structure_to_dict(analyse_path(str(tmp_path / "model")).structure)


def test_opt(tmp_path):
    model = opt()
    structure = analysed(model, tmp_path)
    decoder = model.model.decoder
    assert structure["total_params"] == model.num_parameters()
    assert structure["tied_embeddings"] is True
    assert structure["embedding_params"] == decoder.embed_tokens.weight.numel()
    assert structure["position_embedding_params"] == decoder.embed_positions.weight.numel()
    assert structure["final_norm_params"] == count(decoder.final_layer_norm)
    for got, layer in zip(structure["layers"], decoder.layers, strict=True):
        attention = layer.self_attn
        assert got["total"] == count(layer)
        assert got["attention"]["total"] == count(attention)
        assert got["attention"]["o_proj"] == count(attention.out_proj)
        assert got["attention"]["q_proj"] == count(attention.q_proj)
        assert got["attention"]["num_heads"] == attention.q_proj.weight.shape[0] // attention.head_dim
        assert got["mlp"]["gate_proj"] is None  # OPT has no gate: not invented as zero
        assert got["mlp"]["up_proj"] == count(layer.fc1)
        assert got["mlp"]["down_proj"] == count(layer.fc2)
        assert got["mlp"]["total"] == count(layer.fc1) + count(layer.fc2)
        assert got["mlp"]["intermediate_size"] == layer.fc1.out_features
        assert got["norm"] == count(layer.self_attn_layer_norm) + count(layer.final_layer_norm)
    assert structure["projection_names"] == {"o_proj": "out_proj", "up_proj": "fc1", "down_proj": "fc2"}
    assert any("without a gate" in note for note in structure["notes"])


def test_phi2(tmp_path):
    model = phi2()
    structure = analysed(model, tmp_path)
    assert structure["total_params"] == model.num_parameters()
    assert structure["lm_head_params"] == count(model.lm_head)  # weight and bias
    assert structure["final_norm_params"] == count(model.model.final_layernorm)
    for got, layer in zip(structure["layers"], model.model.layers, strict=True):
        attention = layer.self_attn
        assert got["total"] == count(layer)
        assert got["attention"]["total"] == count(attention)
        assert got["attention"]["o_proj"] == count(attention.dense)
        assert got["attention"]["qk_norm"] == count(attention.q_layernorm) + count(attention.k_layernorm)
        assert got["attention"]["num_heads"] == attention.q_proj.weight.shape[0] // attention.head_dim
        assert got["mlp"]["total"] == count(layer.mlp)
        assert (got["mlp"]["gate_proj"], got["mlp"]["up_proj"]) == (None, count(layer.mlp.fc1))
        assert got["norm"] == count(layer.input_layernorm)


def test_phi3_fused_projections_split_by_head_layout(tmp_path):
    model = phi3()
    structure = analysed(model, tmp_path)
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    assert structure["total_params"] == model.num_parameters()
    for got, layer in zip(structure["layers"], model.model.layers, strict=True):
        qkv = layer.self_attn.qkv_proj.weight
        q_rows = config.num_attention_heads * head_dim
        kv_rows = config.num_key_value_heads * head_dim
        assert got["attention"]["q_proj"] == qkv[:q_rows].numel()
        assert got["attention"]["k_proj"] == qkv[q_rows:q_rows + kv_rows].numel()
        assert got["attention"]["v_proj"] == qkv[q_rows + kv_rows:].numel()
        assert got["attention"]["o_proj"] == count(layer.self_attn.o_proj)
        assert got["attention"]["total"] == count(layer.self_attn)
        assert (got["attention"]["num_heads"], got["attention"]["num_kv_heads"]) == (4, 2)
        gate_up = layer.mlp.gate_up_proj.weight
        assert got["mlp"]["gate_proj"] == gate_up[: gate_up.shape[0] // 2].numel()
        assert got["mlp"]["up_proj"] == gate_up[gate_up.shape[0] // 2:].numel()
        assert got["mlp"]["intermediate_size"] == config.intermediate_size
        assert got["mlp"]["total"] == count(layer.mlp)
        assert got["total"] == count(layer)


@pytest.mark.parametrize("build", [opt, phi2, phi3], ids=lambda f: f.__name__)
def test_state_dict_without_config_still_counts(tmp_path, build):
    import torch

    model = build()
    torch.save(model.state_dict(), tmp_path / "pruned_model.bin")
    structure = structure_to_dict(analyse_path(str(tmp_path / "pruned_model.bin"), model.config.to_dict()).structure)
    assert structure["total_params"] == model.num_parameters()


def test_family_chosen_by_config_then_classes_then_tensor_names(tmp_path):
    """Without a config (a bare state dict), the tensor names pick the description: a Phi-2 state dict
    is read with Phi-2's table (dense -> o_proj, fc1 -> up_proj), not Llama's."""
    import torch

    from prunescope.families import choose_family

    model = phi2()
    names = list(model.state_dict())
    assert choose_family({"model_type": "phi"}, {}, []).name == "phi"
    assert choose_family({"architectures": ["Phi3ForCausalLM"]}, {}, []).name == "phi3"
    assert choose_family({}, {"": "transformers.models.opt.modeling_opt.OPTForCausalLM"}, []).name == "opt"
    assert choose_family({}, {}, names).name == "phi"
    torch.save(model.state_dict(), tmp_path / "phi2_state_dict.bin")
    structure = structure_to_dict(analyse_path(str(tmp_path / "phi2_state_dict.bin")).structure)
    layer = model.model.layers[0]
    assert structure["total_params"] == model.num_parameters()
    assert structure["layers"][0]["attention"]["o_proj"] == count(layer.self_attn.dense)
    assert structure["layers"][0]["mlp"]["up_proj"] == count(layer.mlp.fc1)
    assert structure["layers"][0]["mlp"]["gate_proj"] is None
    assert structure["projection_names"]["o_proj"] == "dense"
