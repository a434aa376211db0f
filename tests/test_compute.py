"""FLOPs, KV cache and memory from the shapes, checked against torch's FlopCounterMode on a real forward.

Each model is built with transformers (pruned with real module replacements where it is pruned), run
with the eager attention (CPU "sdpa" counts the attention core as 0, so it is never used here), and
its counts are read per module: the layer, its self_attn and its mlp, and lm_head. KV bytes are the
sizes of the cache tensors the forward leaves behind. prunescope reads only the saved files.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import MistralConfig, MistralForCausalLM, OPTConfig, OPTForCausalLM

import builders
from prunescope.compute import ComputeOptions, compute, kv_cache_bytes, parse_memory
from prunescope.pipeline import analyse_path
from prunescope.schema import structure_from_dict, structure_to_dict
from test_families import opt, phi2, phi3
from test_slicegpt import write_slicegpt

PREFILL_LENGTHS = (16, 24)
DECODE_CONTEXT = 20


def eager(model):
    model.config._attn_implementation = "eager"
    return model


def counted(model, input_ids, cache=None):
    """(FlopCounterMode's counts per module name without the class prefix, the output)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        output = model(input_ids, cache=cache, use_cache=True)
    per_module = {}
    for name, ops in counter.get_flop_counts().items():
        per_module[name.split(".", 1)[1] if "." in name else ""] = sum(ops.values())
    return counter.get_total_flops(), per_module, output


def cache_bytes(cache) -> int:
    return sum(tensor.numel() * tensor.element_size() for layer in cache.layers
               for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))
               if isinstance(tensor, torch.Tensor))


def layer_modules(model):
    inner = model.model
    if hasattr(inner, "decoder"):  # OPT
        return "model.decoder.layers", inner.decoder.layers
    return "model.layers", inner.layers


def measured(model, seq_len: int, context: int | None = None):
    """FlopCounterMode's figures for a prefill of seq_len tokens, or for decoding one token after `context`."""
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(seq_len)
    if context is None:
        total, per_module, output = counted(model, torch.randint(0, vocab, (1, seq_len), generator=generator))
        return total, per_module, cache_bytes(output.past_key_values)
    with torch.no_grad():
        cache = model(torch.randint(0, vocab, (1, context), generator=generator), use_cache=True).past_key_values
    total, per_module, _ = counted(model, torch.randint(0, vocab, (1, 1), generator=generator), cache)
    return total, per_module, None


def assert_flops_equal(model, structure, seq_len: int | None = None, context: int | None = None):
    """Prefill (seq_len) or decode (context) FLOPs equal FlopCounterMode's: model, layers, parts, LM head."""
    options = ComputeOptions(seq_len=seq_len or 1, context=context or seq_len)
    result = compute(structure, options)
    total, per_module, kv_bytes = measured(model, seq_len, None) if context is None else measured(model, 1, context)
    figures = result.prefill if context is None else result.decode
    assert figures.total == total
    prefix, modules = layer_modules(model)
    assert len(result.layers) == len(modules)
    for position, (layer, module) in enumerate(zip(result.layers, modules)):
        flops = layer.prefill if context is None else layer.decode
        at = f"{prefix}.{position}"
        assert flops.total == per_module.get(at, 0), (at, flops)
        attention = per_module.get(f"{at}.self_attn", 0)
        assert flops.attention_projections + flops.attention_core == attention, (at, flops)
        mlp_name = f"{at}.mlp" if f"{at}.mlp" in per_module else None
        if mlp_name:
            assert flops.mlp == per_module[mlp_name]
        else:  # OPT: fc1/fc2 sit in the layer itself
            assert flops.mlp == per_module.get(f"{at}.fc1", 0) + per_module.get(f"{at}.fc2", 0)
    assert figures.lm_head == per_module["lm_head"]
    if kv_bytes is not None:  # after a prefill of S tokens the cache holds the context S
        assert result.kv_cache_bytes == kv_bytes
        assert kv_cache_bytes(result.layers, seq_len) == kv_bytes
    return result


def check_model(model, tmp_path, name="model"):
    model.save_pretrained(tmp_path / name)
    structure = analyse_path(str(tmp_path / name)).structure
    eager(model)
    for seq_len in PREFILL_LENGTHS:
        assert_flops_equal(model, structure, seq_len=seq_len)
    assert_flops_equal(model, structure, context=DECODE_CONTEXT)
    return structure


def llama_gqa():
    return builders.llama()


def llama_per_layer_pruned():
    """LLM-Pruner-like: per-layer heads, KV heads and intermediate size, config left stale."""
    model = builders.llama(num_attention_heads=4, num_key_value_heads=4, head_dim=16)
    builders.prune_structurally(model, {0: (2, 1, 48), 2: (3, 3, 80), 3: (4, 2, 96)})
    for layer_idx, (heads, kv_heads) in ((0, (2, 1)), (2, (3, 3)), (3, (4, 2))):
        # What a pruner sets so that the pruned attention runs: the query heads per KV head.
        model.model.layers[layer_idx].self_attn.num_key_value_groups = heads // kv_heads
    return model


def llama_layer_removed():
    model = builders.llama()
    builders.remove_layers(model, [1])  # config still says 4 layers
    return model


def qwen2_biases_tied():
    return builders.qwen2(tied=True)


MODELS = {
    "llama_gqa": llama_gqa,
    "llama_bf16": lambda: builders.llama().to(torch.bfloat16),
    "llama_per_layer_pruned": llama_per_layer_pruned,
    "llama_layer_removed": llama_layer_removed,
    "llama_tied": lambda: builders.llama(tie_word_embeddings=True),
    "qwen2_biases_tied": qwen2_biases_tied,
    "qwen3": builders.qwen3,
    "gemma": builders.gemma,
    "opt": opt,
    "opt_350m_projections": lambda: OPTForCausalLM(OPTConfig(
        hidden_size=32, ffn_dim=64, num_attention_heads=4, num_hidden_layers=3, vocab_size=64,
        max_position_embeddings=32, word_embed_proj_dim=16, do_layer_norm_before=False)).eval(),
    "phi2": phi2,
    "phi3_fused": phi3,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_flops_and_kv_bytes_equal_flop_counter_mode(tmp_path, name):
    model = MODELS[name]()
    with torch.no_grad():
        model(torch.zeros((1, 4), dtype=torch.long))  # the pruned model really runs
    structure = check_model(model, tmp_path)
    if name == "llama_bf16":
        assert structure.compute.kv_dtype == "BF16"
    if name == "opt_350m_projections":
        # project_in (16 -> 32) and project_out (32 -> 16) on every token, at the default S
        assert structure.compute.prefill.other == 2 * structure.compute.options.seq_len * 2 * 16 * 32
    if name in ("llama_tied", "qwen2_biases_tied"):
        assert structure.tied_embeddings and structure.compute.prefill.lm_head > 0


def phi3_sliding():
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=3, vocab_size=64, pad_token_id=0,
                                      bos_token_id=0, eos_token_id=0, sliding_window=8)).eval()


@pytest.mark.parametrize("build", [
    lambda: MistralForCausalLM(MistralConfig(**builders.SMALL, head_dim=16, sliding_window=8)).eval(),
    phi3_sliding], ids=["mistral", "phi3"])
def test_sliding_window_caps_decode_keys_and_the_cache(tmp_path, build):
    # Every layer sliding; window 8 < the lengths used, so the caps are exercised.
    model = build()
    structure = check_model(model, tmp_path)
    assert [layer.attention_window for layer in structure.layers] == [8] * len(structure.layers)
    # Every layer's cache stops at window - 1 tokens: any context fits once that does.
    per_token = structure.compute.kv_cache_bytes_per_token
    roomy = compute(structure, ComputeOptions(memory=structure.compute.weight_bytes + 7 * per_token))
    assert roomy.context_unbounded and roomy.kv_cache_bytes == 7 * per_token
    tight = compute(structure, ComputeOptions(memory=structure.compute.weight_bytes + 3 * per_token))
    assert not tight.context_unbounded and tight.max_context == 3


def gemma2_alternating():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(**builders.SMALL, head_dim=24, sliding_window=8)).eval()


def qwen2_upper_layers_sliding():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**builders.SMALL, use_sliding_window=True, sliding_window=8,
                                        max_window_layers=2)).eval()


@pytest.mark.parametrize("build", [gemma2_alternating, qwen2_upper_layers_sliding], ids=["gemma2", "qwen2"])
@pytest.mark.parametrize("stale_config", [False, True])
def test_per_layer_windows(tmp_path, stale_config, build):
    model = build()
    model.save_pretrained(tmp_path / "model")
    if stale_config:  # a config written before layer_types existed: the family's default pattern
        config = json.loads((tmp_path / "model" / "config.json").read_text())
        del config["layer_types"]
        (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    structure = analyse_path(str(tmp_path / "model")).structure
    expected = [8 if kind == "sliding_attention" else None for kind in model.config.layer_types]
    assert [layer.attention_window for layer in structure.layers] == expected
    assert None in expected and 8 in expected
    eager(model)
    for seq_len in PREFILL_LENGTHS:
        assert_flops_equal(model, structure, seq_len=seq_len)
    assert_flops_equal(model, structure, context=DECODE_CONTEXT)


# -- SliceGPT: the sliced state dict (as test_slicegpt writes it) run the way SliceGPT runs it ---------


class SlicedLlamaLayer(nn.Module):
    """SliceGPT's compressed decoder layer: layernorms fused away (RMSN without weights), the residual
    carried through the shortcut matrices as matmuls (residual @ Q) before each addition."""

    def __init__(self, layer, attn_shortcut, mlp_shortcut):
        super().__init__()
        self.self_attn, self.mlp = layer.self_attn, layer.mlp
        self.attn_shortcut_Q = nn.Parameter(attn_shortcut, requires_grad=False)
        self.mlp_shortcut_Q = nn.Parameter(mlp_shortcut, requires_grad=False)

    def forward(self, hidden_states, **kwargs):
        normed = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + 1e-6)
        attention, _ = self.self_attn(normed, **kwargs)
        hidden_states = torch.matmul(hidden_states, self.attn_shortcut_Q) + attention
        normed = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + 1e-6)
        return torch.matmul(hidden_states, self.mlp_shortcut_Q) + self.mlp(normed)


def sliced_llama(state, base):
    """A LlamaForCausalLM whose modules carry the sliced weights (so FlopCounterMode sees real shapes)."""
    model = base
    width = state["model.embed_tokens.weight"].shape[1]
    model.model.embed_tokens = nn.Embedding.from_pretrained(state["model.embed_tokens.weight"])

    def linear(name):
        weight = state[name + ".weight"]
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        module.weight = nn.Parameter(weight.clone(), requires_grad=False)
        return module

    for i, layer in enumerate(list(model.model.layers)):
        at = f"model.layers.{i}"
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(layer.self_attn, projection, linear(f"{at}.self_attn.{projection}"))
        for projection in ("gate_proj", "up_proj", "down_proj"):
            setattr(layer.mlp, projection, linear(f"{at}.mlp.{projection}"))
        model.model.layers[i] = SlicedLlamaLayer(layer, state[f"{at}.attn_shortcut_Q"], state[f"{at}.mlp_shortcut_Q"])
    model.model.norm = nn.Identity()  # fused into the head (an RMSN without weights: elementwise)
    model.lm_head = linear("lm_head")
    assert width < model.config.hidden_size
    return model


def test_slicegpt_shortcuts_and_narrow_inputs(tmp_path):
    base = builders.llama()
    state, _ = write_slicegpt(tmp_path / "sliced", "llama-tiny_0.25", base, "llama", 48)
    structure = analyse_path(str(tmp_path / "sliced" / "llama-tiny_0.25.pt")).structure
    model = eager(sliced_llama(state, builders.llama()))
    for seq_len in PREFILL_LENGTHS:
        result = assert_flops_equal(model, structure, seq_len=seq_len)
        assert result.prefill.shortcut > 0
    assert_flops_equal(model, structure, context=DECODE_CONTEXT)


# -- schema, options, memory ----------------------------------------------------------------------


def test_compute_round_trips_through_the_json(tmp_path):
    model = builders.mistral()
    model.save_pretrained(tmp_path / "m")
    options = ComputeOptions(seq_len=64, context=512, batch=4, kv_dtype="fp8", weight_dtype="int4",
                             memory=parse_memory("1MB"), last_logit=True)
    structure = analyse_path(str(tmp_path / "m"), options=options).structure
    data = structure_to_dict(structure)
    assert structure_to_dict(structure_from_dict(json.loads(json.dumps(data)))) == data
    assert data["compute"]["seq_len"] == 64 and data["compute"]["prefill_macs"] * 2 == data["compute"]["prefill_flops"]
    assert all("compute" in layer for layer in data["layers"])


def test_last_logit_keeps_one_position_of_the_lm_head(tmp_path):
    model = builders.llama()
    model.save_pretrained(tmp_path / "m")
    structure = analyse_path(str(tmp_path / "m")).structure
    full = compute(structure, ComputeOptions(seq_len=16))
    last = compute(structure, ComputeOptions(seq_len=16, last_logit=True))
    eager(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros((1, 16), dtype=torch.long), logits_to_keep=1)
    assert last.prefill_flops == counter.get_total_flops()
    assert full.prefill_flops - last.prefill_flops == 2 * 15 * model.lm_head.weight.numel()


def test_memory_weight_dtype_and_what_fits(tmp_path):
    model = builders.llama()
    model.save_pretrained(tmp_path / "m")
    structure = analyse_path(str(tmp_path / "m")).structure
    parameters = model.num_parameters()
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    result = compute(structure, ComputeOptions(weight_dtype="int4", kv_dtype="bf16", batch=2, context=100,
                                               memory=parameters // 2 + 10_000))
    assert result.weight_bytes == stored
    assert result.weight_bytes_at_dtype == (parameters * 4 + 7) // 8
    per_token = sum(2 * layer.self_attn.k_proj.out_features * 2 for layer in model.model.layers)  # k and v, bf16
    assert result.kv_cache_bytes_per_token == per_token
    assert result.kv_cache_bytes == 2 * 100 * per_token
    assert result.memory_bytes == result.weight_bytes_at_dtype + result.kv_cache_bytes
    spare = parameters // 2 + 10_000 - result.weight_bytes_at_dtype
    assert result.max_context == spare // (2 * per_token)
    assert result.max_batch == spare // (100 * per_token)


def test_parse_memory():
    assert parse_memory("80GB") == 80 * 10**9
    assert parse_memory("80GiB") == 80 * 2**30
    assert parse_memory("512 MB") == 512 * 10**6
    with pytest.raises(ValueError):
        parse_memory("lots")


# -- the comparison, the console, the batch and the command line -----------------------------------


def wanda_2_4(base):
    """2:4 sparsity written into the base's own shapes (what Wanda/SparseGPT 2:4 leave)."""
    model = type(base)(base.config).eval()
    model.load_state_dict(base.state_dict())
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (*[getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")],
                           layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                groups = linear.weight.view(linear.out_features, -1, 4)
                smallest = groups.abs().argsort(dim=-1)[..., :2]
                groups.scatter_(-1, smallest, 0.0)
    return model


def test_comparison_keeps_flops_beside_parameters(tmp_path):
    from prunescope.compare import compare

    base = builders.llama(num_attention_heads=4, num_key_value_heads=4, head_dim=16)  # what the pruned one came from
    base.save_pretrained(tmp_path / "base")
    pruned = llama_per_layer_pruned()
    pruned.save_pretrained(tmp_path / "pruned")
    wanda_2_4(base).save_pretrained(tmp_path / "wanda")
    from prunescope.pipeline import ScanOptions

    scan = ScanOptions(device="cpu")
    base_structure = analyse_path(str(tmp_path / "base"), scan=scan).structure
    comparison = compare(base_structure, analyse_path(str(tmp_path / "pruned"), scan=scan).structure)
    kept = comparison.compute["prefill_flops"]
    assert kept.original == base_structure.compute.prefill_flops and 0 < kept.pruned < kept.original
    assert comparison.compute["kv_cache_bytes_per_token"].reduction_ratio > 0
    assert comparison.layers[0].compute["prefill_flops"].pruned < comparison.layers[0].compute["prefill_flops"].original
    sparse = compare(base_structure, analyse_path(str(tmp_path / "wanda"), scan=scan).structure)
    assert sparse.compute["prefill_flops"].reduction_ratio == 0.0
    assert sparse.nonzero_params.reduction_ratio > 0.4
    assert any("2:4" in note and "sparse kernels" in note for note in sparse.compute_notes)


def run_cli(*args):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "prunescope", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("spelling", ["underscores", "dashes"])
def test_inspect_flags_both_spellings(tmp_path, spelling):
    model = builders.mistral()
    model.save_pretrained(tmp_path / "m")
    flags = ["--seq_len", "64", "--context", "100", "--batch", "2", "--kv_dtype", "fp8", "--weight_dtype", "int4",
             "--memory", "1MB", "--last_logit"]
    if spelling == "dashes":
        flags = [flag.replace("_", "-") if flag.startswith("--") else flag for flag in flags]
    data = json.loads(run_cli("inspect", str(tmp_path / "m"), "--json", *flags))["compute"]
    assert (data["seq_len"], data["context"], data["batch"], data["kv_dtype"], data["weight_dtype"]) == (
        64, 100, 2, "fp8", "int4")
    assert data["memory_budget"] == 10**6 and data["last_logit"] is True
    per_token = sum(layer.self_attn.k_proj.out_features + layer.self_attn.v_proj.out_features
                    for layer in model.model.layers)  # one byte each at fp8
    assert data["kv_cache_bytes_per_token"] == per_token and data["kv_cache_bytes"] == 2 * 100 * per_token
    text = run_cli("inspect", str(tmp_path / "m"), *flags)
    assert "prefill S=64" in text and "FlopCounterMode" in text and "MACs" in text


def test_batch_table_reuse_and_new_options(tmp_path):
    from prunescope.batch import run_batch

    base = builders.llama()
    base.save_pretrained(tmp_path / "base")
    models = tmp_path / "models"
    removed = llama_layer_removed()
    removed.save_pretrained(models / "ShortGPT")
    out = io_buffer()
    assert run_batch(str(models), base_model=str(tmp_path / "base"), output_dir=str(tmp_path / "out"), out=out) == 0
    text = out.getvalue()
    assert "MACs" in text and "memory" in text and "FlopCounterMode" in text
    analysis = models / "ShortGPT" / "analysis"
    first = json.loads((analysis / "model_structure.json").read_text())["compute"]
    assert first["seq_len"] == 2048
    comparison = json.loads((analysis / "model_comparison.json").read_text())["compute"]
    assert comparison["prefill_flops"]["pruned"] == first["prefill_flops"]
    # The same options again: reused as it is.
    assert run_batch(str(models), output_dir=str(tmp_path / "out"), out=io_buffer()) == 0
    assert json.loads((tmp_path / "out" / "batch_analysis_results.json").read_text())["models"][0]["reused"]
    # Other options: the analysis on disk is brought up to date, not reused as it was.
    out = io_buffer()
    assert run_batch(str(models), output_dir=str(tmp_path / "out"), out=out,
                     options=ComputeOptions(seq_len=64)) == 0
    assert json.loads((analysis / "model_structure.json").read_text())["compute"]["seq_len"] == 64
    batch = json.loads((tmp_path / "out" / "batch_analysis_results.json").read_text())
    assert batch["models"][0]["compute"]["seq_len"] == 64 and not batch["models"][0]["reused"]


def io_buffer():
    import io

    return io.StringIO()


# -- Mixture-of-Experts and latent attention --------------------------------------------------------

MOE_MODELS = ("mixtral", "qwen2_moe", "olmoe", "deepseek_v3")


@pytest.mark.parametrize("name", MOE_MODELS)
def test_moe_and_latent_attention_equal_flop_counter_mode(tmp_path, name):
    """Experts removed per layer (router rows with them): each token runs top_k routed experts plus the
    router and any shared experts, as transformers' eager expert loop does; DeepSeek's latent attention
    expands every cached key through kv_b_proj and caches the compressed latent."""
    from test_moe import MOE, remove_experts

    build, block, router, _, _ = MOE[name]
    model = build().eval()
    moe_layers = [idx for idx, layer in enumerate(model.model.layers) if hasattr(getattr(layer, block), "experts")]
    remove_experts(model, {moe_layers[0]: [0, 2, 3], moe_layers[-1]: [1, 3]}, block=block, router_name=router)
    with torch.no_grad():
        model(torch.zeros((1, 4), dtype=torch.long))  # the pruned model runs
    # transformers' default experts kernel (grouped_mm) is invisible to FlopCounterMode: count the loop.
    model.set_experts_implementation("eager")
    structure = check_model(model, tmp_path)
    top_k = model.config.num_experts_per_tok
    assert structure.top_k == top_k
    assert any("top_k" in note for note in structure.compute.notes)
    if name == "deepseek_v3":  # the cache holds kv_lora_rank + rope elements per token and layer
        latent = model.config.kv_lora_rank + model.config.qk_rope_head_dim
        assert all(layer.kv_cache_bytes_per_token == latent * 4 for layer in structure.compute.layers)
