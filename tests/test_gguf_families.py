"""GGUF files of the architectures llama.cpp runs besides Llama: GPT-2, Falcon (both llama.cpp layouts),
Bloom, GPT-NeoX, Phi-2, Phi-3, Qwen2, Gemma-2, Mixtral and Qwen2-MoE, written as convert_hf_to_gguf.py
writes them (tests/gguf_builders.py: gguf-py's own name table, the converter's re-layouts and header
keys). The analysis of the .gguf file must say what the module transformers built says, field by field:
the same oracles as the safetensors tests of these families (test_families, test_moe)."""

import pytest
from transformers import (BloomConfig, BloomForCausalLM, FalconConfig, FalconForCausalLM, Gemma2Config,
                          Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          MixtralConfig, MixtralForCausalLM, Phi3Config, Phi3ForCausalLM, PhiConfig, PhiForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM)

import gguf_builders
from oracle import check_family, count
from prunescope.pipeline import analyse_path
from prunescope.schema import structure_to_dict
from test_families import (bloom_family, falcon_family, gpt2_family, linear_rows, llama_like_family, neox_family,
                           prune_gpt2_heads, runs)
from test_moe import moe_family

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'prunescope[export]')")

TINY = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=3, vocab_size=64)


def analysed_gguf(model, convert, tmp_path, name="model.gguf", quantized=False) -> dict:
    converted = convert(model)
    gguf_builders.write(converted, tmp_path / name, model.config.num_hidden_layers, quantized)
    return structure_to_dict(analyse_path(str(tmp_path / name)).structure)


def phi2_family(model):
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    return {
        "layers": lambda m: m.model.layers,
        "attention": {**{projection: (lambda layer, projection=projection: count(getattr(layer.self_attn, projection)))
                         for projection in ("q_proj", "k_proj", "v_proj")},
                      "o_proj": lambda layer: count(layer.self_attn.dense), "total": lambda layer: count(layer.self_attn),
                      "num_heads": lambda layer: layer.self_attn.q_proj.out_features // head_dim,
                      "num_kv_heads": lambda layer: layer.self_attn.k_proj.out_features // head_dim},
        "mlp": {"total": lambda layer: count(layer.mlp), "gate_proj": lambda layer: None,
                "up_proj": lambda layer: count(layer.mlp.fc1), "down_proj": lambda layer: count(layer.mlp.fc2),
                "intermediate_size": lambda layer: layer.mlp.fc1.out_features},
        "layer": {"norm": lambda layer: count(layer.input_layernorm)},
        "model": {"lm_head_params": lambda m: count(m.lm_head), "tied_embeddings": lambda m: False,
                  "final_norm_params": lambda m: count(m.model.final_layernorm)},
    }


def phi3_family(model):
    """qkv_proj split as Phi3Attention.forward splits it (q = heads x head_dim, then k, then v);
    gate_up_proj as Phi3MLP chunks it (gate half, then up half)."""
    config = model.config

    def qkv(index):
        def parameters(layer):
            attention = layer.self_attn
            q_rows = config.num_attention_heads * attention.head_dim
            kv_rows = config.num_key_value_heads * attention.head_dim
            return attention.qkv_proj.weight.split([q_rows, kv_rows, kv_rows])[index].numel()
        return parameters

    def gate_up(index):
        return lambda layer: layer.mlp.gate_up_proj.weight.chunk(2)[index].numel()

    return {
        "layers": lambda m: m.model.layers,
        "attention": {"q_proj": qkv(0), "k_proj": qkv(1), "v_proj": qkv(2), "o_proj": lambda layer: count(layer.self_attn.o_proj),
                      "total": lambda layer: count(layer.self_attn),
                      "num_heads": lambda layer: config.num_attention_heads,
                      "num_kv_heads": lambda layer: config.num_key_value_heads},
        "mlp": {"total": lambda layer: count(layer.mlp), "gate_proj": gate_up(0), "up_proj": gate_up(1),
                "down_proj": lambda layer: count(layer.mlp.down_proj),
                "intermediate_size": lambda layer: layer.mlp.gate_up_proj.out_features // 2},
        "layer": {"norm": lambda layer: count(layer.input_layernorm) + count(layer.post_attention_layernorm)},
        "model": {"lm_head_params": lambda m: m.lm_head.weight.numel(), "tied_embeddings": lambda m: False},
    }


def test_gguf_gpt2_dense_and_heads_pruned_per_layer(tmp_path):
    """attn_qkv (the Conv1D c_attn transposed) split into q, k and v by head_count, one per layer when
    the heads were pruned per layer; learned positions as position_embd; the head tied (no output)."""
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=3, vocab_size=64, n_positions=16)).eval()
    check_family(analysed_gguf(model, gguf_builders.gpt2, tmp_path, "dense.gguf"), model, gpt2_family(model))
    prune_gpt2_heads(model, {0: [0, 2, 3], 1: [1]})
    runs(model)
    structure = analysed_gguf(model, gguf_builders.gpt2, tmp_path, "pruned.gguf")
    check_family(structure, model, gpt2_family(model))
    assert [layer["attention"]["num_heads"] for layer in structure["layers"]] == [3, 1, 4]
    assert structure["lm_head_params"] == model.transformer.wte.weight.numel()


def test_gguf_tied_head_written_as_a_copy_is_counted_as_a_head(tmp_path):
    """Older conversions of GPT-2 and Bloom wrote the tied head again as `output`: the file then holds
    two tensors, and both are counted (whether they are equal is in the data, not in the header)."""
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=64, n_positions=16)).eval()
    converted = gguf_builders.gpt2(model)
    converted.gguf_tensors["output.weight"] = model.transformer.wte.weight
    gguf_builders.write(converted, tmp_path / "copy.gguf", 2)
    structure = structure_to_dict(analyse_path(str(tmp_path / "copy.gguf")).structure)
    wte = model.transformer.wte.weight.numel()
    assert structure["total_params"] == model.num_parameters() + wte
    assert (structure["tied_embeddings"], structure["lm_head_params"], structure["embedding_params"]) == (False, wte, wte)
    assert structure["other_params"] == 0


FALCONS = {
    # Falcon-40B/180B: ln_attn and ln_mlp (attn_norm_2, attn_norm), KV groups reordered to [q | k | v]
    "new_architecture": dict(new_decoder_architecture=True, num_kv_heads=2),
    # Falcon-7B: one k and one v head, one input_layernorm shared by the parallel attention and MLP
    "multi_query": dict(multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=True),
}


@pytest.mark.parametrize("variant", FALCONS)
def test_gguf_falcon(tmp_path, variant):
    model = FalconForCausalLM(FalconConfig(**{**TINY, "num_hidden_layers": 2}, **FALCONS[variant])).eval()
    structure = analysed_gguf(model, gguf_builders.falcon, tmp_path, "dense.gguf")
    check_family(structure, model, falcon_family(model))
    assert structure["tied_embeddings"] is True and structure["config_mismatches"] == []
    attention = model.transformer.h[0].self_attention
    head_dim = attention.head_dim
    if variant == "new_architecture":  # layer 0 loses KV group 1 (its k, v and 2 query heads)
        group = attention.num_heads // attention.num_kv_heads
        rows, columns = list(range((group + 2) * head_dim)), list(range(group * head_dim))
        attention.num_heads, attention.num_kv_heads = group, 1
    else:  # layer 0 loses query heads 1 and 2
        kept = [0, 3]
        rows = [head * head_dim + i for head in kept + [4, 5] for i in range(head_dim)]
        columns = [head * head_dim + i for head in kept for i in range(head_dim)]
        attention.num_heads = 2
    attention.query_key_value = linear_rows(attention.query_key_value, rows=rows)
    attention.dense = linear_rows(attention.dense, columns=columns)
    runs(model)
    structure = analysed_gguf(model, gguf_builders.falcon, tmp_path, "pruned.gguf")
    check_family(structure, model, falcon_family(model))
    assert structure["layers"][0]["attention"]["num_heads"] == 2


def test_gguf_bloom(tmp_path):
    """attn_qkv reordered from Bloom's per-head layout; the embedding LayerNorm as token_embd_norm."""
    model = BloomForCausalLM(BloomConfig(hidden_size=32, n_head=4, n_layer=2, vocab_size=64)).eval()
    structure = analysed_gguf(model, gguf_builders.bloom, tmp_path)
    check_family(structure, model, bloom_family(model))
    assert structure["tied_embeddings"] is True and structure["other_params"] == 0


def test_gguf_gpt_neox(tmp_path):
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**TINY, intermediate_size=48)).eval()
    structure = analysed_gguf(model, gguf_builders.gpt_neox, tmp_path)
    check_family(structure, model, neox_family(model))
    assert structure["family"] == "gptneox" and structure["config_mismatches"] == []
    assert not any("not one prunescope knows" in note for note in structure["notes"])


@pytest.mark.parametrize("fused_qkv", [False, True], ids=["separate_qkv", "fused_qkv"])
def test_gguf_phi2(tmp_path, fused_qkv):
    """q/k/v with biases, separate or fused (attn_qkv), dense -> attn_output, fc1/fc2 without a gate, the
    head's bias."""
    model = PhiForCausalLM(PhiConfig(**TINY, intermediate_size=128, pad_token_id=0, bos_token_id=0,
                                     eos_token_id=0)).eval()
    structure = analysed_gguf(model, lambda m: gguf_builders.phi2(m, fused_qkv), tmp_path)
    check_family(structure, model, phi2_family(model))
    assert structure["config_mismatches"] == []


def test_gguf_phi3_fused_qkv_and_gate_up(tmp_path):
    """attn_qkv split by head_count/head_count_kv (GQA), ffn_up holding gate and up (2 x n_ff rows);
    LongRoPE's rope_factors_long/short are config values, not parameters: listed as buffers."""
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [1.0, 2.0, 3.0, 4.0],
            "short_factor": [1.0, 1.0, 1.0, 1.0], "original_max_position_embeddings": 16}
    model = Phi3ForCausalLM(Phi3Config(**TINY, num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                       rope_parameters=rope, pad_token_id=0, bos_token_id=0, eos_token_id=0)).eval()
    structure = analysed_gguf(model, gguf_builders.phi3, tmp_path)
    check_family(structure, model, phi3_family(model))
    assert sorted(structure["buffers"]) == ["rope_factors_long.weight", "rope_factors_short.weight"]
    assert structure["config_mismatches"] == []


LLAMA_LIKE = {
    # q/k/v biases, fewer KV heads, a head of its own
    "qwen2": (lambda: Qwen2ForCausalLM(Qwen2Config(**TINY, num_key_value_heads=2, intermediate_size=40)),
              gguf_builders.llama_like("QWEN2"), ("input_layernorm", "post_attention_layernorm")),
    # heads wider than hidden/heads (key_length), four norms, tied head (no output tensor)
    "gemma2": (lambda: Gemma2ForCausalLM(Gemma2Config(**TINY, num_key_value_heads=1, head_dim=16, intermediate_size=40)),
               gguf_builders.llama_like("GEMMA2"), ("input_layernorm", "post_attention_layernorm",
                                                     "pre_feedforward_layernorm", "post_feedforward_layernorm")),
}


@pytest.mark.parametrize("name", LLAMA_LIKE)
def test_gguf_llama_like(tmp_path, name):
    build, convert, norms = LLAMA_LIKE[name]
    model = build().eval()
    structure = analysed_gguf(model, convert, tmp_path)
    check_family(structure, model, llama_like_family(model, norms))
    assert structure["tied_embeddings"] is (name == "gemma2") and structure["config_mismatches"] == []


def mixtral():
    return MixtralForCausalLM(MixtralConfig(**TINY, num_key_value_heads=2, intermediate_size=48, num_local_experts=4,
                                            num_experts_per_tok=2))


# name -> (build, convert, test_moe's name for the module's layout)
MOE = {
    "mixtral": (mixtral, gguf_builders.mixtral, "mixtral"),
    "mixtral_per_expert": (mixtral, lambda model: gguf_builders.mixtral(model, per_expert=True), "mixtral"),
    "qwen2_moe": (lambda: Qwen2MoeForCausalLM(Qwen2MoeConfig(
        **TINY, num_key_value_heads=2, intermediate_size=48, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=24, shared_expert_intermediate_size=40)), gguf_builders.qwen2_moe, "qwen2_moe"),
}


@pytest.mark.parametrize("quantized", [False, True], ids=["f32", "q8_0"])
@pytest.mark.parametrize("name", MOE)
def test_gguf_moe(tmp_path, name, quantized):
    """Stacked ffn_{gate,up,down}_exps (experts counted from their first dimension) or, in early Mixtral
    files, ffn_gate.<e> per expert; the router ffn_gate_inp, Qwen2-MoE's shared expert ffn_*_shexp and its
    gate ffn_gate_inp_shexp; top_k from expert_used_count. Q8_0 tensors (3-D stacked experts among them)
    count by their logical elements."""
    build, convert, layout = MOE[name]
    model = build().eval()
    structure = analysed_gguf(model, convert, tmp_path, quantized=quantized)
    check_family(structure, model, moe_family(model, layout))
    assert structure["config_mismatches"] == [] and structure["other_params"] == 0
    assert all(layer["other"] == 0 and layer["mlp"]["other"] == 0 for layer in structure["layers"])
    assert ("Q8_0" in structure["dtypes"]) is quantized


def test_gguf_table_by_architecture_and_per_layer_header_sizes():
    """Phi-3's GGUF ffn_up is gate and up (its own table); a per-layer head_count array (a pruned model)
    gives each layer its own count, and no single count for the whole model."""
    from prunescope.families import choose_family

    config = {"format": "gguf", "model_type": "phi3", "attention.head_count": [4, 2],
              "attention.head_count_kv": [2, 1], "attention.key_length": 8}
    family = choose_family(config, {}, [])
    assert family.layer["ffn_up"] == "gate_up_proj" and family.layer["attn_qkv"] == "qkv_proj"
    assert family.config_value(config, "heads", 1) == 2 and family.config_value(config, "kv_heads", 1) == 1
    assert family.config_value(config, "heads") is None  # a list is no one size for the whole model
    assert choose_family({"format": "gguf", "model_type": "qwen2"}, {}, []).layer["ffn_up"] == "up_proj"


@pytest.mark.parametrize("split_kv_b", [True, False], ids=["k_b_v_b", "kv_b"])
def test_gguf_deepseek2_latent_attention(tmp_path, split_kv_b):
    """DeepSeek-V3 as llama.cpp's deepseek2: MLA parts attn_q_a/q_a_norm/q_b/kv_a_mqa/kv_a_norm and kv_b
    (whole, or split per head into k_b and v_b), head_dim from key_length_mla (key_length is the latent's),
    a dense first layer, stacked and shared experts; exp_probs_b (the router's correction bias) a buffer.
    FLOPs and KV cache equal those of the same model's safetensors files."""
    from test_moe import MOE as SAFETENSORS_MOE

    model = SAFETENSORS_MOE["deepseek_v3"][0]().eval()
    config = model.config
    structure = analysed_gguf(model, lambda m: gguf_builders.deepseek2(m, split_kv_b), tmp_path)
    check_family(structure, model, moe_family(model, "deepseek_v3"))
    assert structure["head_dim"] == config.qk_nope_head_dim + config.qk_rope_head_dim
    assert structure["buffers"] == [f"blk.{i}.exp_probs_b.bias" for i in (1, 2)]
    assert structure["config_mismatches"] == [] and structure["num_experts"] == [0, 4, 4]
    for got, layer in zip(structure["layers"], model.model.layers, strict=True):
        attention = layer.self_attn
        assert (got["attention"]["q_proj"], got["attention"]["k_proj"], got["attention"]["v_proj"]) == (None, None, None)
        assert got["attention"]["num_heads"] == got["attention"]["num_kv_heads"] == config.num_attention_heads
        mla = got["attention"]["mla"]
        for part in ("q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj"):
            assert mla[part] == count(getattr(attention, part)), part
        assert (mla["q_lora_rank"], mla["kv_lora_rank"], mla["qk_nope_head_dim"], mla["qk_rope_head_dim"],
                mla["v_head_dim"]) == (config.q_lora_rank, config.kv_lora_rank, config.qk_nope_head_dim,
                                       config.qk_rope_head_dim, config.v_head_dim)
    model.save_pretrained(tmp_path / "safetensors")
    original = structure_to_dict(analyse_path(str(tmp_path / "safetensors")).structure)
    assert [layer["compute"] for layer in structure["layers"]] == [layer["compute"] for layer in original["layers"]]


@pytest.mark.parametrize("quantized", [False, True], ids=["f32", "q8_0"])
def test_gguf_stacked_experts_removed_are_named_by_content(tmp_path, quantized):
    """Each stacked expert is fingerprinted by its own first bytes, found from the tensor's size in bytes:
    in a block-quantized file (Q8_0: 34 bytes per 32 values) that is not its element count."""
    from builders import remove_experts
    from prunescope.compare import compare
    from prunescope.schema import comparison_to_dict

    model = MixtralForCausalLM(MixtralConfig(**TINY, num_key_value_heads=2, intermediate_size=64, num_local_experts=4,
                                             num_experts_per_tok=2)).eval()
    gguf_builders.write(gguf_builders.mixtral(model), tmp_path / "base.gguf", 3, quantized)
    plan = {0: [0, 2, 3], 2: [1, 3]}
    remove_experts(model, plan, block="mlp", router_name="gate")
    runs(model)
    gguf_builders.write(gguf_builders.mixtral(model), tmp_path / "pruned.gguf", 3, quantized)
    base, pruned = (analyse_path(str(tmp_path / f"{name}.gguf")).structure for name in ("base", "pruned"))
    assert ("Q8_0" in pruned.dtypes) is quantized
    comparison = comparison_to_dict(compare(base, pruned))
    assert comparison["removed_experts"] == {"0": [1], "1": [], "2": [0, 2]}
    assert [layer["experts"]["method"] for layer in comparison["layers"] if layer["layer_idx"] in plan] == \
        ["content", "content"]
