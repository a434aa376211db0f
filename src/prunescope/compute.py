"""What pruning buys: FLOPs and MACs per layer, KV-cache bytes and memory, from the shapes alone.

A stage after interpretation: pure functions from a ModelStructure (its weight shapes and attention
windows) and ComputeOptions to small records. Nothing is loaded or run.

Convention (CONVENTION below; the README says the same): FLOPs = 2 x MACs of every matrix product, as
torch.utils.flop_counter.FlopCounterMode counts a real forward with the eager attention: linear weights
(no bias adds, norms, activations, softmax, RoPE, embeddings), the attention core QKᵀ and A·V over the
full tokens x keys rectangle with the query head count (no causal halving), the LM head on every
position (`last_logit`: only the last, as generate() does). Prefill = S tokens, batch 1; decode = 1 token
with L tokens cached, attending L + 1 keys (a sliding-window layer keeps window - 1 tokens, so it
attends min(L, window - 1) + 1). The formulas are in /work/shared/notes/compute.md §3; the tests check
them against FlopCounterMode on the models transformers builds.
"""

from __future__ import annotations

import re
from operator import itemgetter

from .interpret.structure import LayerStructure, ModelStructure
from .records import Record
from .tensors import DTYPE_SIZES, FLOAT_DTYPES

CONVENTION = ("FLOPs = 2 x MACs of every matrix product, as torch's FlopCounterMode counts an eager forward: "
              "linear weights (no biases, norms, activations, softmax, RoPE, embeddings), attention QKᵀ and A·V "
              "over the full tokens x keys rectangle with the query heads (no causal halving), the LM head on "
              "every position; prefill = S tokens at batch 1, decode = 1 token after L cached (L + 1 keys)")

# --weight_dtype / --kv_dtype choices -> bits per element.
DTYPE_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}
DEFAULT_SEQ_LEN = 2048
DEFAULT_CONTEXT = 2048
LLM_PRUNER_SEQ_LEN = 64  # LLM-Pruner's test_speedup.py counts MACs on a (1, 64) input


class ComputeOptions(Record):
    seq_len: int = DEFAULT_SEQ_LEN  # prefill tokens S
    context: int = DEFAULT_CONTEXT  # decode: tokens already cached L; also the context of the KV-cache figure
    batch: int = 1  # for the KV-cache and memory figures (FLOPs are per sequence, batch 1)
    kv_dtype: str | None = None  # a DTYPE_BITS key; None: the model's own float dtype
    weight_dtype: str | None = None  # a DTYPE_BITS key: weight bytes if stored at that precision
    memory: int | None = None  # bytes available: the largest context (at batch) and batch (at context) that fit
    last_logit: bool = False  # prefill computes logits for the last position only (generate())


class PassFlops(tuple):
    """FLOPs of one forward pass through one layer (or the model), split by where they are spent:
    (attention_projections, attention_core, mlp, shortcut, lm_head, other).

    A tuple with named fields rather than a Record: a model has two per layer, and building Records
    that many times cost more than the rest of the compute stage (the header analysis has a budget)."""

    __slots__ = ()
    FIELDS = ("attention_projections", "attention_core", "mlp", "shortcut", "lm_head", "other")

    def __new__(cls, attention_projections: int, attention_core: int, mlp: int, shortcut: int = 0, lm_head: int = 0,
                other: int = 0):
        return tuple.__new__(cls, (attention_projections, attention_core, mlp, shortcut, lm_head, other))

    attention_projections = property(itemgetter(0))  # q, k, v, o
    attention_core = property(itemgetter(1))  # QKᵀ and A·V
    mlp = property(itemgetter(2))  # gate, up, down (fc1, fc2)
    shortcut = property(itemgetter(3))  # SliceGPT's shortcut matrices, applied to the residual as matmuls
    lm_head = property(itemgetter(4))  # model level only
    other = property(itemgetter(5))  # model level only: other linears outside the layers (OPT-350m's project_in/out)

    @property
    def total(self) -> int:
        return sum(self)

    def __repr__(self):
        return "PassFlops(" + ", ".join(f"{name}={value}" for name, value in zip(self.FIELDS, self)) + ")"


class PassTotals:
    """prefill_flops / decode_flops of a record holding `prefill` and `decode` (PassFlops)."""

    @property
    def prefill_flops(self) -> int:
        return self.prefill.total

    @property
    def decode_flops(self) -> int:
        return self.decode.total


class LayerCompute(PassTotals, Record):
    layer_idx: int
    prefill: PassFlops
    decode: PassFlops
    kv_cache_bytes_per_token: int  # keys and values of one token in this layer, at the KV dtype
    attention_window: int | None = None  # sliding window: the cache keeps window - 1 tokens

    # The prefill split by name, for comparisons and tables.
    prefill_attention_projections = property(lambda self: self.prefill.attention_projections)
    prefill_attention_core = property(lambda self: self.prefill.attention_core)
    prefill_mlp = property(lambda self: self.prefill.mlp)
    prefill_shortcut = property(lambda self: self.prefill.shortcut)


class ModelCompute(PassTotals, Record):
    options: ComputeOptions
    layers: tuple[LayerCompute, ...]
    prefill: PassFlops  # the layers' sums plus the LM head
    decode: PassFlops
    kv_dtype: str  # what the KV bytes assume: the option, or the model's dtype (e.g. "BF16")
    kv_cache_bytes_per_token: int  # while the context is shorter than every window
    kv_cache_bytes: int  # at batch x context, sliding-window layers capped
    weight_bytes: int  # as stored
    weight_bytes_by_dtype: dict  # stored dtype -> bytes
    weight_bytes_at_dtype: int | None  # at options.weight_dtype
    memory_bytes: int  # weights (at weight_dtype if given, else as stored) + KV cache at batch x context
    max_context: int | None = None  # with options.memory: at options.batch; None when it does not fit at all
    max_batch: int | None = None  # with options.memory: at options.context
    context_unbounded: bool = False  # every layer is sliding-window: the cache stops growing
    notes: tuple[str, ...] = ()


def compute(structure: ModelStructure, options: ComputeOptions | None = None) -> ModelCompute:
    """FLOPs, KV cache and memory of `structure` under `options` (defaults: S = L = 2048, batch 1)."""
    options = options or ComputeOptions()
    kv_dtype = options.kv_dtype or model_float_dtype(structure)
    kv_bits = dtype_bits(kv_dtype)
    layers = tuple(layer_compute(layer, options, kv_bits, structure.top_k) for layer in structure.layers)
    notes = list(_moe_notes(structure))
    head = lm_head_matmul(structure)
    if head is None:
        notes.append("no LM head weight found: its FLOPs are not counted")
    head = head or 0
    outside = sum(out * inp for out, inp in structure.outside_weight_shapes.values())
    prefill = _sum([layer.prefill for layer in layers], lm_head=2 * (1 if options.last_logit else options.seq_len) * head,
                   other=2 * options.seq_len * outside)
    decode = _sum([layer.decode for layer in layers], lm_head=2 * head, other=2 * outside)
    if any(not layer.weight_shapes for layer in structure.layers):
        notes.append("layers without readable projection shapes count 0 FLOPs")
    by_dtype = {dtype: count * DTYPE_SIZES.get(dtype, 0) for dtype, count in structure.dtypes.items()}
    weight_bytes = sum(by_dtype.values())
    at_dtype = _bytes(structure.total_params, DTYPE_BITS[options.weight_dtype]) if options.weight_dtype else None
    weights = at_dtype if at_dtype is not None else weight_bytes
    kv_cache = kv_cache_bytes(layers, options.context, options.batch)
    max_context = max_batch = None
    unbounded = False
    if options.memory is not None:
        max_context, unbounded = largest_context(layers, options.batch, options.memory - weights)
        per_sequence = kv_cache_bytes(layers, options.context, 1)
        spare = options.memory - weights
        max_batch = (spare // per_sequence if per_sequence else None) if spare >= 0 else 0
    return ModelCompute(
        options=options, layers=layers, prefill=prefill, decode=decode, kv_dtype=kv_dtype,
        kv_cache_bytes_per_token=sum(layer.kv_cache_bytes_per_token for layer in layers),
        kv_cache_bytes=kv_cache, weight_bytes=weight_bytes, weight_bytes_by_dtype=by_dtype,
        weight_bytes_at_dtype=at_dtype, memory_bytes=weights + kv_cache, max_context=max_context,
        max_batch=max_batch, context_unbounded=unbounded, notes=tuple(notes))


def layer_compute(layer: LayerStructure, options: ComputeOptions, kv_bits: int, top_k: int | None = None) -> LayerCompute:
    terms = layer_terms(layer.weight_shapes)
    if layer.mlp.num_experts:
        terms = (terms[0], terms[1] + moe_macs(layer, top_k)) + terms[2:]
    window = layer.attention_window
    # Prefill runs on an empty cache: every key of the S tokens is scored (the window only masks).
    prefill = layer_flops(terms, options.seq_len, options.seq_len)
    decode = layer_flops(terms, 1, cached_tokens(window, options.context) + 1)
    return LayerCompute(layer_idx=layer.layer_idx, prefill=prefill, decode=decode,
                        kv_cache_bytes_per_token=_bytes(terms[4], kv_bits), attention_window=window)


def layer_terms(shapes: dict) -> tuple[int, int, int, int, int, int]:
    """What a layer's FLOPs and KV cache scale with, from its weight shapes (out, in): MACs per token of
    the attention projections, of the MLP and of SliceGPT's shortcuts; the attention core's MACs per
    token per key; KV-cache elements per token; MACs per key attended (latent attention's kv_b_proj)."""
    def elements(name):
        shape = shapes.get(name)
        return shape[0] * shape[1] if shape else 0

    def size(name, axis):
        shape = shapes.get(name)
        return shape[axis] if shape else 0

    attention = elements("q_proj") + elements("k_proj") + elements("v_proj") + elements("o_proj") + sum(
        out * inp for name, (out, inp) in shapes.items() if name.startswith("mla.") and name != "mla.kv_b_proj")
    # The MLP term: dense gate/up/down. MoE would add top_k experts' (gate, up, down) per token here.
    mlp = elements("gate_proj") + elements("up_proj") + elements("down_proj")
    shortcut = sum(out * inp for name, (out, inp) in shapes.items() if name.endswith("shortcut_Q"))
    # QKᵀ: per key, the query heads x head_dim (the q rows); A·V: the value width the query heads read
    # (the o_proj columns).
    core = size("q_proj", 0) + size("mla.q_b_proj", 0) + size("o_proj", 1)
    kv = size("k_proj", 0) + size("v_proj", 0)
    per_key = 0
    if "mla.kv_a_proj_with_mqa" in shapes:
        # Latent attention (DeepSeek, as transformers runs it): the cache holds the compressed latent and
        # the shared rope key (kv_a_proj_with_mqa's rows), and kv_b_proj expands every key attended,
        # cached ones included, at each step: its MACs go with the keys, not the new tokens.
        kv = size("mla.kv_a_proj_with_mqa", 0)
        per_key = elements("mla.kv_b_proj")
    return attention, mlp, shortcut, core, kv, per_key


def moe_macs(layer: LayerStructure, top_k: int | None) -> int:
    """MACs per token of an MoE layer's MLP: the router scores every routed expert, every shared-expert
    weight is applied, and each token runs through top_k routed experts (gate, up and down: 3 x the
    expert's width x the hidden width; 2 x without a gate). Experts of different widths count their mean,
    which is exact only when tokens spread evenly over them; without top_k no routed expert is counted."""
    shapes = layer.weight_shapes
    router = shapes.get("router")
    shared = sum(out * inp for name, (out, inp) in shapes.items() if name.startswith("shared_experts."))
    macs = (router[0] * router[1] if router else 0) + shared
    mlp = layer.mlp
    widths = mlp.expert_intermediate_size
    widths = widths if isinstance(widths, list) else [widths] * (mlp.num_experts or 0)
    hidden = router[1] if router else None
    if not top_k or not hidden or not widths or None in widths:
        return macs
    matrices = 3 if mlp.gate_proj is not None else 2
    per_expert = [matrices * width * hidden for width in widths]
    return macs + min(top_k, len(widths)) * sum(per_expert) // len(per_expert)


def _moe_notes(structure: ModelStructure):
    layers = [layer for layer in structure.layers if layer.mlp.num_experts]
    if not layers:
        return
    if not structure.top_k:
        yield "no top_k (num_experts_per_tok) in the config: routed experts' FLOPs are not counted"
    else:
        yield (f"MoE layers: each token runs through top_k = {structure.top_k} routed experts (the router "
               "and shared experts on every token), as transformers' eager expert loop computes them")
    uneven = [layer.layer_idx for layer in layers if isinstance(layer.mlp.expert_intermediate_size, list)]
    if uneven:
        yield (f"layers {uneven} have experts of different widths: their FLOPs use the mean expert (exact only "
               "when tokens spread evenly over the experts)")


def layer_flops(terms: tuple, tokens: int, keys: int) -> PassFlops:
    """One layer's FLOPs for `tokens` queries attending `keys` keys (FLOPs = 2 x MACs)."""
    attention, mlp, shortcut, core, _, per_key = terms
    return PassFlops(2 * tokens * attention + 2 * keys * per_key, 2 * tokens * keys * core, 2 * tokens * mlp,
                     2 * tokens * shortcut)


def lm_head_matmul(structure: ModelStructure) -> int | None:
    """MACs of the LM head for one position: vocab x its input width (the tied embedding's when tied)."""
    shape = structure.lm_head_shape
    return shape[0] * shape[1] if shape else None


def kv_cache_bytes(layers, context: int, batch: int = 1) -> int:
    """Bytes the KV cache holds for `batch` sequences of `context` tokens (transformers' DynamicCache:
    a sliding-window layer keeps its last window - 1 tokens)."""
    return batch * sum(layer.kv_cache_bytes_per_token * cached_tokens(layer.attention_window, context)
                       for layer in layers)


def largest_context(layers, batch: int, spare: int) -> tuple[int | None, bool]:
    """(the largest context whose KV cache at `batch` fits in `spare` bytes, whether any context does
    because every layer's cache stops growing). None when not even one token fits."""
    if spare < kv_cache_bytes(layers, 1, batch):
        return None, False
    growing = [layer for layer in layers if layer.attention_window is None and layer.kv_cache_bytes_per_token]
    low, high = 1, 1
    if not growing:  # every cache stops at its window: past the widest one nothing grows
        high = max((layer.attention_window for layer in layers if layer.attention_window), default=2) - 1
        if kv_cache_bytes(layers, high, batch) <= spare:
            return None, True
    while kv_cache_bytes(layers, high, batch) <= spare:
        low, high = high, high * 2
    while high - low > 1:  # the cache grows monotonically with the context: bisect
        middle = (low + high) // 2
        low, high = (middle, high) if kv_cache_bytes(layers, middle, batch) <= spare else (low, middle)
    return low, False


def model_float_dtype(structure: ModelStructure) -> str:
    """The floating dtype most parameters are stored in: what the activations and the KV cache use."""
    floats = {dtype: count for dtype, count in structure.dtypes.items() if dtype in FLOAT_DTYPES}
    return max(floats, key=floats.get) if floats else "F32"


def dtype_bits(dtype: str) -> int:
    return DTYPE_BITS[dtype] if dtype in DTYPE_BITS else 8 * DTYPE_SIZES.get(dtype, 4)


def parse_memory(text: str) -> int:
    """"80GB" -> 80e9 bytes, "80GiB" -> 80 x 2^30; a bare number is bytes. Raises ValueError."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([A-Z]*)", text.strip().upper())
    if not match or match.group(2) not in units:
        raise ValueError(f"memory {text!r}: give a size like 80GB, 24GiB or 512MB")
    return int(float(match.group(1)) * units[match.group(2)])


def cached_tokens(window: int | None, context: int) -> int:
    """Tokens a layer's cache holds after `context` tokens: transformers' DynamicCache keeps the last
    window - 1 of a sliding-window layer (the next token's own key makes the window)."""
    return context if window is None else min(context, window - 1)


def _bytes(elements: int, bits: int) -> int:
    return (elements * bits + 7) // 8


def _sum(passes: list[PassFlops], lm_head: int, other: int) -> PassFlops:
    columns = [sum(column) for column in zip(*passes)][:4] if passes else [0, 0, 0, 0]
    return PassFlops(*columns, lm_head, other)
