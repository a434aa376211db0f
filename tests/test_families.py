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


# -- every family pruning research uses: GPT-2, GPT-NeoX, Falcon, Bloom, GPT-J, StableLM, OLMo, OLMo-2,
# Granite. Each is checked field by field against the module transformers builds (oracle.check_family),
# unpruned and pruned with real operations on the module, which must still run before it is written.

import json  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (BloomConfig, BloomForCausalLM, FalconConfig, FalconForCausalLM, Gemma3ForCausalLM,  # noqa: E402
                          Gemma3TextConfig, GPT2Config,
                          GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM,
                          GraniteConfig, GraniteForCausalLM, MixtralConfig, MixtralForCausalLM, Olmo2Config,
                          Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM, StableLmConfig, StableLmForCausalLM)
from transformers.pytorch_utils import Conv1D  # noqa: E402

from oracle import check_family  # noqa: E402

TINY = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=3, vocab_size=64, intermediate_size=48)
TOKENS = torch.tensor([[1, 2, 3, 4, 5]])


def runs(model) -> None:
    """A pruned model must still compute before it is written."""
    with torch.no_grad():
        logits = model(TOKENS, use_cache=False).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def part(weight, bias, view, index) -> int:
    """Parameters of one part of a fused weight, given how its rows are laid out: `view` reshapes the
    rows (the module's own layout), `index` picks the part."""
    count_ = weight.view(*view, weight.shape[-1])[index].numel()
    return count_ + (bias.view(*view)[index].numel() if bias is not None else 0)


def save_and_analyse(model, tmp_path, name="model"):
    model.save_pretrained(tmp_path / name)
    return structure_to_dict(analyse_path(str(tmp_path / name)).structure)


# GPT-2: Conv1D [in, out]; c_attn's columns are q | k | v blocks, each heads x head_dim wide.
def gpt2_family(model):
    head_dim = model.config.n_embd // model.config.n_head

    def block(layer):
        return layer.attn.c_attn.weight.shape[1] // 3

    def qkv(index):
        return lambda layer: (layer.attn.c_attn.weight[:, index * block(layer):(index + 1) * block(layer)].numel()
                              + layer.attn.c_attn.bias[index * block(layer):(index + 1) * block(layer)].numel())

    return {
        "layers": lambda m: m.transformer.h,
        "attention": {"total": lambda layer: count(layer.attn), "q_proj": qkv(0), "k_proj": qkv(1), "v_proj": qkv(2),
                      "o_proj": lambda layer: count(layer.attn.c_proj),
                      "num_heads": lambda layer: block(layer) // head_dim,
                      "num_kv_heads": lambda layer: block(layer) // head_dim},
        "mlp": {"total": lambda layer: count(layer.mlp), "gate_proj": lambda layer: None,
                "up_proj": lambda layer: count(layer.mlp.c_fc), "down_proj": lambda layer: count(layer.mlp.c_proj),
                "intermediate_size": lambda layer: layer.mlp.c_fc.weight.shape[1]},
        "layer": {"norm": lambda layer: count(layer.ln_1) + count(layer.ln_2)},
        "model": {"embedding_params": lambda m: m.transformer.wte.weight.numel(),
                  "position_embedding_params": lambda m: m.transformer.wpe.weight.numel(),
                  "final_norm_params": lambda m: count(m.transformer.ln_f),
                  "tied_embeddings": lambda m: m.lm_head.weight is m.transformer.wte.weight},
    }


def prune_gpt2_heads(model, keep: dict[int, list[int]]) -> None:
    """What GPT2Attention.prune_heads did (transformers 4.x): per layer, drop the heads' columns from each
    of c_attn's q, k and v blocks and their rows from c_proj; record them in config.pruned_heads."""
    hidden, heads = model.config.n_embd, model.config.n_head
    head_dim = hidden // heads
    for layer_idx, kept in keep.items():
        attention = model.transformer.h[layer_idx].attn
        columns = [block * hidden + head * head_dim + i for block in range(3) for head in kept for i in range(head_dim)]
        rows = [head * head_dim + i for head in kept for i in range(head_dim)]
        c_attn, c_proj = Conv1D(len(columns), hidden), Conv1D(hidden, len(rows))
        with torch.no_grad():
            c_attn.weight.copy_(attention.c_attn.weight[:, columns])
            c_attn.bias.copy_(attention.c_attn.bias[columns])
            c_proj.weight.copy_(attention.c_proj.weight[rows])
            c_proj.bias.copy_(attention.c_proj.bias)
        attention.c_attn, attention.c_proj = c_attn, c_proj
        attention.split_size, attention.num_heads = len(rows), len(kept)
    model.config.pruned_heads = {idx: sorted(set(range(heads)) - set(kept)) for idx, kept in keep.items()}


def test_gpt2_and_its_heads_pruned_per_layer(tmp_path):
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=3, vocab_size=64, n_positions=16)).eval()
    structure = save_and_analyse(model, tmp_path, "dense")
    check_family(structure, model, gpt2_family(model))
    assert structure["config_mismatches"] == []
    prune_gpt2_heads(model, {0: [0, 2, 3], 1: [1]})
    runs(model)
    structure = save_and_analyse(model, tmp_path, "pruned")
    check_family(structure, model, gpt2_family(model))
    assert [layer["attention"]["num_heads"] for layer in structure["layers"]] == [3, 1, 4]
    # config.pruned_heads says which heads each layer lost: the shapes agree, so nothing is stale
    assert structure["config_mismatches"] == []
    assert any("pruned_heads" in note and "[0, 1]" in note for note in structure["notes"])
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    config["pruned_heads"] = {"0": [1, 2]}  # wrong for layer 0 (it lost one head), silent on layer 1
    (tmp_path / "pruned" / "config.json").write_text(json.dumps(config))
    structure = structure_to_dict(analyse_path(str(tmp_path / "pruned")).structure)
    fields = {m["field"]: m["per_layer"] for m in structure["config_mismatches"]}
    assert fields["pruned_heads"] == {"0": 3} and fields["num_attention_heads"] == {"1": 1}


def test_gpt2_hub_layout_buffers_are_not_parameters(tmp_path):
    """Older GPT-2 files: no `transformer.` prefix, and the causal mask attn.bias / attn.masked_bias of
    every layer in the state dict: listed as buffers, never counted."""
    from safetensors.torch import save_file

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=64, n_positions=16)).eval()
    tensors = {name.removeprefix("transformer."): tensor.contiguous() for name, tensor in model.state_dict().items()
               if name != "lm_head.weight"}
    for layer_idx in range(2):
        tensors[f"h.{layer_idx}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        tensors[f"h.{layer_idx}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "hub").mkdir()
    save_file(tensors, str(tmp_path / "hub" / "model.safetensors"))
    model.config.to_json_file(str(tmp_path / "hub" / "config.json"))
    structure = structure_to_dict(analyse_path(str(tmp_path / "hub")).structure)
    check_family(structure, model, gpt2_family(model))
    assert sorted(structure["buffers"]) == sorted(f"h.{i}.attn.{b}" for i in range(2) for b in ("bias", "masked_bias"))


def per_head_qkv(attention_of, head_size_of):
    """(qkv(index), heads) oracles for a query_key_value whose rows interleave [q_h, k_h, v_h] per head
    h (GPT-NeoX, Bloom): the parameters of q, k or v, and the heads, read off the module."""
    def qkv(index):
        def parameters(layer):
            attention = attention_of(layer)
            return part(attention.query_key_value.weight, attention.query_key_value.bias,
                        (-1, 3, head_size_of(attention)), (slice(None), index))
        return parameters

    def heads(layer):
        attention = attention_of(layer)
        return attention.query_key_value.weight.shape[0] // (3 * head_size_of(attention))

    return qkv, heads


# GPT-NeoX / Pythia: query_key_value rows interleaved per head: [q_h, k_h, v_h] for each head h.
def neox_family(model):
    qkv, heads = per_head_qkv(lambda layer: layer.attention, lambda attention: attention.head_size)
    return {
        "layers": lambda m: m.gpt_neox.layers,
        "attention": {"total": lambda layer: count(layer.attention), "q_proj": qkv(0), "k_proj": qkv(1),
                      "v_proj": qkv(2), "o_proj": lambda layer: count(layer.attention.dense),
                      "num_heads": heads, "num_kv_heads": heads},
        "mlp": {"total": lambda layer: count(layer.mlp), "gate_proj": lambda layer: None,
                "up_proj": lambda layer: count(layer.mlp.dense_h_to_4h),
                "down_proj": lambda layer: count(layer.mlp.dense_4h_to_h),
                "intermediate_size": lambda layer: layer.mlp.dense_h_to_4h.out_features},
        "layer": {"norm": lambda layer: count(layer.input_layernorm) + count(layer.post_attention_layernorm)},
        "model": {"embedding_params": lambda m: m.gpt_neox.embed_in.weight.numel(),
                  "lm_head_params": lambda m: m.get_output_embeddings().weight.numel(),
                  "final_norm_params": lambda m: count(m.gpt_neox.final_layer_norm),
                  "tied_embeddings": lambda m: False},
    }


def linear_rows(linear: nn.Linear, rows=None, columns=None) -> nn.Linear:
    """A smaller copy of a Linear keeping some output rows and/or input columns."""
    rows = list(range(linear.out_features)) if rows is None else rows
    columns = list(range(linear.in_features)) if columns is None else columns
    smaller = nn.Linear(len(columns), len(rows), bias=linear.bias is not None)
    with torch.no_grad():
        smaller.weight.copy_(linear.weight[rows][:, columns])
        if linear.bias is not None:
            smaller.bias.copy_(linear.bias[rows])
    return smaller


def test_pythia_heads_pruned_in_the_interleaved_layout_and_a_layer_removed(tmp_path):
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**TINY)).eval()
    structure = save_and_analyse(model, tmp_path, "dense")
    check_family(structure, model, neox_family(model))
    assert structure["projection_names"]["q_proj"] == "query_key_value (split)"
    head_size = model.gpt_neox.layers[0].attention.head_size
    for layer_idx, kept in {0: [1, 3], 2: [0, 1, 2]}.items():
        attention = model.gpt_neox.layers[layer_idx].attention
        rows = [head * 3 * head_size + i for head in kept for i in range(3 * head_size)]
        columns = [head * head_size + i for head in kept for i in range(head_size)]
        attention.query_key_value = linear_rows(attention.query_key_value, rows=rows)
        attention.dense = linear_rows(attention.dense, columns=columns)
    del model.gpt_neox.layers[1]  # ShortGPT: config left stale
    runs(model)
    structure = save_and_analyse(model, tmp_path, "pruned")
    check_family(structure, model, neox_family(model))
    assert [layer["attention"]["num_heads"] for layer in structure["layers"]] == [2, 3]
    fields = {m["field"]: m for m in structure["config_mismatches"]}
    assert fields["num_hidden_layers"]["actual"] == 2 and fields["num_hidden_layers"]["config"] == 3


def test_pythia_hub_buffers_are_not_parameters(tmp_path):
    from safetensors.torch import save_file

    model = GPTNeoXForCausalLM(GPTNeoXConfig(**TINY)).eval()
    tensors = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    tensors = {("embed_out.weight" if name == "lm_head.weight" else name): tensor for name, tensor in tensors.items()}
    for layer_idx in range(3):
        prefix = f"gpt_neox.layers.{layer_idx}.attention."
        tensors[prefix + "bias"] = torch.tril(torch.ones(1, 1, 16, 16, dtype=torch.bool))
        tensors[prefix + "masked_bias"] = torch.tensor(-1e9)
        tensors[prefix + "rotary_emb.inv_freq"] = torch.ones(4)
    (tmp_path / "hub").mkdir()
    save_file(tensors, str(tmp_path / "hub" / "model.safetensors"))
    model.config.to_json_file(str(tmp_path / "hub" / "config.json"))
    structure = structure_to_dict(analyse_path(str(tmp_path / "hub")).structure)
    check_family(structure, model, neox_family(model))
    assert len(structure["buffers"]) == 9


# Falcon: three layouts of query_key_value, by config.
def falcon_family(model):
    def layout(attention):
        if attention.new_decoder_architecture:  # [q x G, k, v] per KV group
            group = attention.num_heads // attention.num_kv_heads
            return (-1, group + 2, attention.head_dim), (slice(None), slice(0, group)), \
                (slice(None), group), (slice(None), group + 1)
        if attention.multi_query:  # [q heads, k, v]
            return (-1, attention.head_dim), slice(0, -2), -2, -1
        return (-1, 3, attention.head_dim), (slice(None), 0), (slice(None), 1), (slice(None), 2)

    def qkv(index):
        def parameters(layer):
            attention = layer.self_attention
            view, *parts = layout(attention)
            return part(attention.query_key_value.weight, attention.query_key_value.bias, view, parts[index])
        return parameters

    def kv_heads(layer):
        attention = layer.self_attention
        return attention.num_kv_heads if attention.new_decoder_architecture or not attention.multi_query else 1

    return {
        "layers": lambda m: m.transformer.h,
        "attention": {"total": lambda layer: count(layer.self_attention), "q_proj": qkv(0), "k_proj": qkv(1),
                      "v_proj": qkv(2), "o_proj": lambda layer: count(layer.self_attention.dense),
                      "num_heads": lambda layer: layer.self_attention.num_heads,
                      "num_kv_heads": lambda layer: layer.self_attention.num_kv_heads if
                      layer.self_attention.new_decoder_architecture else kv_heads(layer)},
        "mlp": {"total": lambda layer: count(layer.mlp), "gate_proj": lambda layer: None,
                "up_proj": lambda layer: count(layer.mlp.dense_h_to_4h),
                "down_proj": lambda layer: count(layer.mlp.dense_4h_to_h)},
        "layer": {"norm": lambda layer: sum(count(child) for name, child in layer.named_children()
                                            if name.startswith("ln_") or name.endswith("layernorm"))},
    }


FALCONS = {
    "new_architecture": dict(new_decoder_architecture=True, num_kv_heads=2),
    "multi_query": dict(multi_query=True),
    "per_head": dict(multi_query=False, parallel_attn=False, bias=True),
}


@pytest.mark.parametrize("variant", FALCONS)
def test_falcon_layouts_and_their_pruning(tmp_path, variant):
    config = FalconConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=64, **FALCONS[variant])
    model = FalconForCausalLM(config).eval()
    structure = save_and_analyse(model, tmp_path, "dense")
    check_family(structure, model, falcon_family(model))
    assert structure["config_mismatches"] == []
    attention = model.transformer.h[0].self_attention
    head_dim = attention.head_dim
    if variant == "new_architecture":  # remove KV group 1 (its k, v and 2 query heads)
        group = attention.num_heads // attention.num_kv_heads
        rows = list(range((group + 2) * head_dim))
        columns = list(range(group * head_dim))
        attention.num_heads, attention.num_kv_heads = group, 1
    elif variant == "multi_query":  # remove query heads 1 and 2
        kept = [0, 3]
        rows = [head * head_dim + i for head in kept + [4, 5] for i in range(head_dim)]
        columns = [head * head_dim + i for head in kept for i in range(head_dim)]
        attention.num_heads = 2
    else:  # remove head 2 of the interleaved layout
        kept = [0, 1, 3]
        rows = [head * 3 * head_dim + i for head in kept for i in range(3 * head_dim)]
        columns = [head * head_dim + i for head in kept for i in range(head_dim)]
        attention.num_heads = attention.num_kv_heads = 3
    attention.query_key_value = linear_rows(attention.query_key_value, rows=rows)
    attention.dense = linear_rows(attention.dense, columns=columns)
    runs(model)
    structure = save_and_analyse(model, tmp_path, "pruned")
    check_family(structure, model, falcon_family(model))


def bloom_family(model):
    qkv, heads = per_head_qkv(lambda layer: layer.self_attention, lambda attention: attention.head_dim)
    return {
        "layers": lambda m: m.transformer.h,
        "attention": {"total": lambda layer: count(layer.self_attention), "q_proj": qkv(0), "k_proj": qkv(1),
                      "v_proj": qkv(2), "o_proj": lambda layer: count(layer.self_attention.dense),
                      "num_heads": heads, "num_kv_heads": heads},
        "mlp": {"total": lambda layer: count(layer.mlp), "gate_proj": lambda layer: None,
                "up_proj": lambda layer: count(layer.mlp.dense_h_to_4h),
                "down_proj": lambda layer: count(layer.mlp.dense_4h_to_h)},
        "layer": {"norm": lambda layer: count(layer.input_layernorm) + count(layer.post_attention_layernorm)},
        "model": {"embedding_norm_params": lambda m: count(m.transformer.word_embeddings_layernorm),
                  "final_norm_params": lambda m: count(m.transformer.ln_f),
                  "embedding_params": lambda m: m.transformer.word_embeddings.weight.numel()},
    }


def test_bloom(tmp_path):
    model = BloomForCausalLM(BloomConfig(hidden_size=32, n_head=4, n_layer=2, vocab_size=64)).eval()
    check_family(save_and_analyse(model, tmp_path), model, bloom_family(model))


def test_gptj(tmp_path):
    model = GPTJForCausalLM(GPTJConfig(n_embd=32, n_head=4, n_layer=2, vocab_size=64, rotary_dim=4,
                                       n_positions=16)).eval()
    head_dim = 32 // 4
    family = {
        "layers": lambda m: m.transformer.h,
        "attention": {"total": lambda layer: count(layer.attn), "q_proj": lambda layer: count(layer.attn.q_proj),
                      "k_proj": lambda layer: count(layer.attn.k_proj), "v_proj": lambda layer: count(layer.attn.v_proj),
                      "o_proj": lambda layer: count(layer.attn.out_proj),
                      "num_heads": lambda layer: layer.attn.q_proj.out_features // head_dim},
        "mlp": {"total": lambda layer: count(layer.mlp), "gate_proj": lambda layer: None,
                "up_proj": lambda layer: count(layer.mlp.fc_in), "down_proj": lambda layer: count(layer.mlp.fc_out)},
        "layer": {"norm": lambda layer: count(layer.ln_1)},
        "model": {"lm_head_params": lambda m: count(m.lm_head), "tied_embeddings": lambda m: False},
    }
    check_family(save_and_analyse(model, tmp_path), model, family)


def llama_like_family(model, norms, qk_norms=()):
    """Llama's module names (q/k/v/o_proj, gate/up/down_proj); heads from the config's head width."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = {name: (lambda layer, name=name: count(getattr(layer.self_attn, name)))
                 for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    mlp = {name: (lambda layer, name=name: count(getattr(layer.mlp, name)))
           for name in ("gate_proj", "up_proj", "down_proj")}
    return {
        "layers": lambda m: m.model.layers,
        "attention": {**attention, "total": lambda layer: count(layer.self_attn),
                      "num_heads": lambda layer: layer.self_attn.q_proj.out_features // head_dim,
                      "num_kv_heads": lambda layer: layer.self_attn.k_proj.out_features // head_dim,
                      "qk_norm": lambda layer: sum(count(getattr(layer.self_attn, name)) for name in qk_norms)},
        "mlp": {**mlp, "total": lambda layer: count(layer.mlp),
                "intermediate_size": lambda layer: layer.mlp.gate_proj.out_features},
        "layer": {"norm": lambda layer: sum(count(getattr(layer, name)) for name in norms)},
        "model": {"head_dim": lambda m: head_dim},
    }


LLAMA_LIKE = {
    "stablelm": (lambda: StableLmForCausalLM(StableLmConfig(**TINY, num_key_value_heads=2, qk_layernorm=True)),
                 ("input_layernorm", "post_attention_layernorm"), ("q_layernorm", "k_layernorm")),
    "olmo": (lambda: OlmoForCausalLM(OlmoConfig(**TINY, num_key_value_heads=2)), (), ()),
    # OLMo-2's q/k norms span the whole projection: they must not be taken for one head.
    "olmo2": (lambda: Olmo2ForCausalLM(Olmo2Config(**TINY, num_key_value_heads=4)),
              ("post_attention_layernorm", "post_feedforward_layernorm"), ("q_norm", "k_norm")),
    "granite": (lambda: GraniteForCausalLM(GraniteConfig(**TINY, num_key_value_heads=2)),
                ("input_layernorm", "post_attention_layernorm"), ()),
    # Gemma-3: heads wider than hidden/heads (config.head_dim) and per-head q/k norms [head_dim]
    "gemma3_text": (lambda: Gemma3ForCausalLM(Gemma3TextConfig(**TINY, num_key_value_heads=2, head_dim=16)),
                    ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                       "post_feedforward_layernorm"), ("q_norm", "k_norm")),
}


@pytest.mark.parametrize("name", LLAMA_LIKE)
def test_llama_like_families(tmp_path, name):
    build, norms, qk_norms = LLAMA_LIKE[name]
    model = build().eval()
    structure = save_and_analyse(model, tmp_path)
    check_family(structure, model, llama_like_family(model, norms, qk_norms))
    assert structure["config_mismatches"] == []
    if name == "stablelm":
        assert structure["head_dim_source"] == "q_norm shape"  # one LayerNorm per head: [head_dim]


def test_head_dim_never_from_a_base_of_another_family(tmp_path):
    """A Qwen2 model analysed with a Llama base of another width keeps its own head_dim."""
    from builders import llama, qwen2

    model = qwen2()
    model.save_pretrained(tmp_path / "qwen2")
    base = llama(hidden_size=64, num_attention_heads=8, num_key_value_heads=8).config.to_dict()
    structure = structure_to_dict(analyse_path(str(tmp_path / "qwen2"), base).structure)
    assert structure["head_dim"] == 16 and structure["layers"][0]["attention"]["num_heads"] == 4
    assert "base" not in structure["head_dim_source"]


def test_unknown_family_counts_exactly_with_a_note(tmp_path):
    """A family prunescope has no table for: exact totals, everything it cannot place in `other`."""
    from safetensors.torch import save_file

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=64, n_positions=16)).eval()
    tensors = {name.replace("attn.", "mixer.").replace("mlp.", "ffn."): tensor.contiguous()
               for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    (tmp_path / "odd").mkdir()
    save_file(tensors, str(tmp_path / "odd" / "model.safetensors"))
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "odd_new_arch"}')
    structure = structure_to_dict(analyse_path(str(tmp_path / "odd")).structure)
    assert structure["total_params"] == model.num_parameters()
    assert any("not one prunescope knows" in note for note in structure["notes"])


def test_gpt2_conv1d_sparsity_reads_outputs_as_columns(tmp_path):
    """--sparsity on Conv1D weights ([in, out]): a head zeroed in place (its q/k/v columns of c_attn and
    its rows of c_proj) is found, and a zeroed MLP channel (a column of c_fc, a row of c_proj)."""
    from prunescope.pipeline import ScanOptions

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=64, n_positions=16)).eval()
    head_dim, layer = 8, model.transformer.h[0]
    with torch.no_grad():
        for block in range(3):
            layer.attn.c_attn.weight[:, block * 32 + head_dim:block * 32 + 2 * head_dim] = 0
            layer.attn.c_attn.bias[block * 32 + head_dim:block * 32 + 2 * head_dim] = 0
        layer.attn.c_proj.weight[head_dim:2 * head_dim] = 0
        layer.mlp.c_fc.weight[:, 5] = 0
        layer.mlp.c_fc.bias[5] = 0
        layer.mlp.c_proj.weight[5] = 0
    model.save_pretrained(tmp_path / "m")
    structure = structure_to_dict(analyse_path(str(tmp_path / "m"), scan=ScanOptions(device="cpu")).structure)
    got = structure["layers"][0]
    assert got["attention"]["effective_heads"] == 3
    assert got["mlp"]["effective_intermediate_size"] == layer.mlp.c_fc.weight.shape[1] - 1
    assert got["nonzero"] == sum(int((p != 0).sum()) for p in layer.parameters())
    assert structure["layers"][1]["attention"]["effective_heads"] == 4


@pytest.mark.parametrize("variant", ["neox", "falcon_new_architecture"])
def test_sparsity_splits_interleaved_qkv_per_part(tmp_path, variant):
    """--sparsity on an interleaved fused query_key_value: each part's nonzeros come from its own rows
    (per head in GPT-NeoX, per KV group in Falcon's new architecture); a zeroed head is found."""
    from prunescope.pipeline import ScanOptions

    if variant == "neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**TINY)).eval()
        attention = model.gpt_neox.layers[0].attention
        fused, dense, head_dim = attention.query_key_value, attention.dense, attention.head_size
        view, index = (-1, 3, head_dim), ((slice(None), 0), (slice(None), 1), (slice(None), 2))
        q_rows_of_head = lambda head: slice(head * 3 * head_dim, head * 3 * head_dim + head_dim)  # noqa: E731
    else:
        model = FalconForCausalLM(FalconConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                               vocab_size=64, **FALCONS["new_architecture"])).eval()
        attention = model.transformer.h[0].self_attention
        fused, dense, head_dim = attention.query_key_value, attention.dense, attention.head_dim
        view, index = (-1, 4, head_dim), ((slice(None), slice(0, 2)), (slice(None), 2), (slice(None), 3))
        q_rows_of_head = lambda head: slice((head // 2) * 4 * head_dim + (head % 2) * head_dim,  # noqa: E731
                                            (head // 2) * 4 * head_dim + (head % 2 + 1) * head_dim)
    with torch.no_grad():
        fused.weight[q_rows_of_head(1)] = 0  # head 1's queries
        dense.weight[:, head_dim:2 * head_dim] = 0  # and its output columns
        fused.weight.view(*view, fused.weight.shape[-1])[index[1]][..., ::3] = 0  # some key weights
    model.save_pretrained(tmp_path / "m")
    structure = structure_to_dict(analyse_path(str(tmp_path / "m"), scan=ScanOptions(device="cpu")).structure)
    got = structure["layers"][0]["attention"]
    for name, part in zip(("q_proj", "k_proj", "v_proj"), index):
        weight = fused.weight.view(*view, fused.weight.shape[-1])[part]
        assert got[f"{name}_nonzero"] == int((weight != 0).sum()), name
    assert got["effective_heads"] == 3


def test_the_registry_index_names_each_table_and_its_model_types():
    """families.REGISTRY lists each table's model_types so that a config loads only its own table; it
    must say exactly what the tables themselves declare."""
    import importlib.resources

    from prunescope import families

    declared = []
    for module, attribute, model_types in families.REGISTRY:
        table = getattr(importlib.import_module(f"prunescope.families.{module}"), attribute)
        assert tuple(table.model_types) == model_types, module
        declared += model_types
    assert len(declared) == len(set(declared))
    tables = {path.stem for path in importlib.resources.files("prunescope.families").iterdir()
              if path.suffix == ".py" and path.stem not in ("__init__", "base", "windows")}
    assert tables == {module for module, _, _ in families.REGISTRY}


@pytest.mark.parametrize("build", [
    lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=3, vocab_size=64, n_positions=16)),  # Conv1D, fused qkv
    phi3,  # fused qkv and gate_up, split by rows
    lambda: MixtralForCausalLM(MixtralConfig(**TINY, num_key_value_heads=2, num_local_experts=4,
                                             num_experts_per_tok=2)),  # routed experts
], ids=["gpt2", "phi3", "mixtral"])
def test_repeated_layers_are_worked_out_once_and_read_as_their_own(tmp_path, build, monkeypatch):
    """Identical layers are worked out once (interpret._repeated_layer); each repeat still carries its own
    number and its own tensors' names: the same structure as working out every layer, field by field."""
    import importlib

    module = importlib.import_module("prunescope.interpret.interpret")  # the package exports a function of that name
    build().save_pretrained(tmp_path / "model")
    worked = []
    layer = module._layer
    monkeypatch.setattr(module, "_layer", lambda idx, *rest: worked.append(idx) or layer(idx, *rest))
    once = analyse_path(str(tmp_path / "model")).structure
    assert worked == [0]
    def every_layer(idx, stack, family, head_dim, prefix, classes, config, names, notes, worked_out):
        structure, residual_width, layer_names = layer(idx, stack, family, head_dim, prefix, classes, config, notes)
        names.update(layer_names)
        return structure, residual_width

    monkeypatch.setattr(module, "_repeated_layer", every_layer)
    every = analyse_path(str(tmp_path / "model")).structure
    assert once.layers == every.layers and once == every
    assert [sorted(name.split(".")[2] for name in layer.tensor_roles) for layer in once.layers] == \
        [[str(idx)] * len(layer.tensor_roles) for idx, layer in enumerate(once.layers)]
