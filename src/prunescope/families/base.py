"""The vocabulary every family description uses: roles, and the Family record that maps a family's
tensor names to them. Role names are the output schema's names, so a description reads like the JSON.

A tensor is named `<layer_prefix>.<N>.<module>.<weight|bias>` inside the decoder stack and
`<module>.<weight|bias>` outside it; descriptions map `<module>` to a role, as llama.cpp's
`gguf-py/gguf/tensor_mapping.py` does for its architectures. `.weight` and `.bias` are suffixes, not
part of the names.
"""

from __future__ import annotations

import functools

from ..records import Record

# -- roles inside a decoder layer ---------------------------------------------------------------
Q, K, V, O = "q_proj", "k_proj", "v_proj", "o_proj"
GATE, UP, DOWN = "gate_proj", "up_proj", "down_proj"
QKV, GATE_UP = "qkv_proj", "gate_up_proj"  # fused projections, split into their parts (see FUSED)
Q_NORM, K_NORM = "q_norm", "k_norm"  # norms on the queries and keys inside the attention (Qwen3, Gemma3)
NORM = "norm"  # the layer's own norms (input, post-attention, pre/post-feedforward)
SHORTCUT = "shortcut"  # SliceGPT's residual rotations: real parameters, in any family it slices

ATTENTION_PROJECTIONS = (Q, K, V, O)
MLP_PROJECTIONS = (GATE, UP, DOWN)

# -- Mixture-of-Experts ---------------------------------------------------------------------------
# Routed experts: per-expert tensors (a "*" in the module name stands for the expert's number, e.g.
# "block_sparse_moe.experts.*.w1") or stacked 3-D tensors holding every expert ([E, ...], see STACKED).
EXPERT_GATE, EXPERT_UP, EXPERT_DOWN = "experts.gate_proj", "experts.up_proj", "experts.down_proj"
EXPERT_GATE_UP = "experts.gate_up_proj"  # stacked gate and up, split in halves (or interleaved)
EXPERT_PARTS = {EXPERT_GATE: (GATE,), EXPERT_UP: (UP,), EXPERT_DOWN: (DOWN,), EXPERT_GATE_UP: (GATE, UP)}
ROUTER = "router"  # the router (gate) that scores the experts: one row per routed expert
SHARED_EXPERT = "shared_experts"  # always-active experts and the gate scaling them (Qwen2-MoE, DeepSeek)

# -- Multi-head latent attention (DeepSeek-V2/V3): the tensor groups, by their own names ------------
MLA_PARTS = ("q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj")
# A multi-token-prediction module stored as one more layer after the decoder stack (DeepSeek-V3's Hub
# files): its own tensors mark it; it is counted, but it is not one of the config's layers.
MTP = "mtp"

# -- roles outside the decoder stack ------------------------------------------------------------
EMBEDDING, POSITIONS, LM_HEAD, FINAL_NORM = "embedding", "position_embedding", "lm_head", "final_norm"
EMBEDDING_NORM = "embedding_norm"  # a norm right after the embedding (Bloom's word_embeddings_layernorm)

# -- buckets: where a layer's tensor is counted in the output -----------------------------------
# attention / mlp: a projection (the role says which); qk_norm: inside the attention as well;
# attention_other / mlp_other: anything else inside those modules; norm, shortcut, other: the layer's.
BUCKETS = {Q: "attention", K: "attention", V: "attention", O: "attention", QKV: "attention",
           GATE: "mlp", UP: "mlp", DOWN: "mlp", GATE_UP: "mlp",
           Q_NORM: "qk_norm", K_NORM: "qk_norm", NORM: "norm", SHORTCUT: "shortcut",
           ROUTER: "router", SHARED_EXPERT: "shared_experts", MTP: "other",
           **{role: "experts" for role in EXPERT_PARTS}, **{part: "mla" for part in MLA_PARTS}}
ATTENTION_BUCKETS = ("attention", "qk_norm", "mla", "attention_other")
MLP_BUCKETS = ("mlp", "router", "experts", "shared_experts", "mlp_other")

# How a fused projection's rows divide into its parts, in row order.
HEADS = "heads"  # [q heads | k heads | v heads], counts from the head layout (Phi-3, GPT-2)
HALVES = "halves"  # two equal halves (Phi-3's gate_up_proj)
PER_HEAD = "per head"  # interleaved [q_h, k_h, v_h] for each head h (GPT-NeoX, Bloom, Falcon-RW)
PER_KV_GROUP = "per kv group"  # [q x G, k, v] for each KV group, G = heads / kv heads (Falcon new arch.)
MULTI_QUERY = "multi-query"  # [q heads | one k | one v] (Falcon-7B)


class Fused(Record):
    parts: tuple[str, ...]  # roles, in the order their rows are stored
    split: str  # HEADS, HALVES, PER_HEAD, PER_KV_GROUP or MULTI_QUERY


class Stacked(Record):
    """How a stacked experts tensor [E, a, b] stores each expert's matrix."""

    out_in: bool = True  # [E, out, in] like nn.Linear (Mixtral in memory); False: [E, in, out] (GPT-OSS, Llama-4)
    interleaved: bool = False  # gate/up columns alternate (GPT-OSS) instead of two halves


FUSED = {QKV: Fused((Q, K, V), HEADS), GATE_UP: Fused((GATE, UP), HALVES)}

# Present in every family: SliceGPT adds its shortcut matrices to whichever model it slices.
COMMON_LAYER = {"attn_shortcut_Q": SHORTCUT, "mlp_shortcut_Q": SHORTCUT}

# Tensors outside the layers, by their module's last name part. A final norm a family does not list
# is still recognised by its name ending in "norm".
OUTSIDE = {"embed_tokens": EMBEDDING, "embed_positions": POSITIONS, "lm_head": LM_HEAD, "norm": FINAL_NORM}

# What config.json calls each size (the first key present is used). Mismatch reports keep the
# original tool's field names whatever the family's key is.
CONFIG_KEYS = {"layers": ("num_hidden_layers",), "heads": ("num_attention_heads",),
               "kv_heads": ("num_key_value_heads",), "intermediate": ("intermediate_size",),
               "hidden": ("hidden_size",), "vocab": ("vocab_size",), "head_dim": ("head_dim",),
               "experts": ("num_local_experts", "num_experts", "n_routed_experts"),
               "top_k": ("num_experts_per_tok", "experts_per_token", "moe_top_k"),
               "expert_intermediate": ("moe_intermediate_size",)}


class Family(Record):
    """One family's (or one shared layout's) tensor names, as data."""

    name: str  # the description's name, e.g. "llama" for all the Llama-like families
    model_types: dict[str, str]  # config.json model_type -> transformers' class-name prefix
    layer: dict[str, str]  # module inside a decoder layer -> role
    attention: str = "self_attn"  # the attention module; unknown tensors under it are attention_other
    mlp: str = "mlp"  # the MLP module; unknown tensors under it are mlp_other
    separator: str = "."  # what follows those modules' names: "self_attn.q_proj"; GGUF's flat "attn_q" has "_"
    outside: dict[str, str] = OUTSIDE  # module name part outside the layers -> role
    fused: dict[str, Fused] = FUSED  # fused role -> its parts
    # Fused layouts chosen by the config: ((config key, value, {fused role: Fused}), ...), first match wins.
    fused_by_config: tuple = ()
    config_keys: dict[str, tuple[str, ...]] = CONFIG_KEYS
    transposed: tuple[str, ...] = ()  # modules whose weights are stored [in, out] (GPT-2's Conv1D)
    stacked: Stacked = Stacked()  # how this family's stacked experts tensors are laid out
    # Buffers older files carry (not parameters): names relative to a layer, or whole names outside the layers.
    buffers: tuple[str, ...] = ()
    # head_dim as a sum of config keys, when the family's config.head_dim means something else (DeepSeek).
    head_dim_sum: tuple[str, ...] = ()
    # Linear layers outside the decoder stack that every token passes through besides the LM head (their
    # parameters stay in `other`; their matmuls count as FLOPs): module name part -> nothing else needed.
    outside_linears: tuple[str, ...] = ()

    def place(self, rest: str) -> tuple[str, str | None, str]:
        """(bucket, role or None, module) of a tensor named `rest` relative to its layer."""
        module = _module(rest)
        role = self.layer.get(module) or COMMON_LAYER.get(module)
        if role is None:
            numbered = _numbers_as_stars(module)  # per-expert (or per-head) tensors: "experts.*.w1"
            role = self.layer.get(numbered) if numbered != module else None
        if role is not None:
            return BUCKETS[role], role, module
        if module.startswith(self.attention + self.separator):
            return "attention_other", None, module
        if module.startswith(self.mlp + self.separator):
            return "mlp_other", None, module
        if module.split(".", 1)[0].endswith("norm"):
            return "norm", NORM, module
        return "other", None, module

    def outside_role(self, name: str) -> str | None:
        """The role of a tensor outside the layers (its full name), None when it plays none."""
        parts = _module(name).split(".")
        for part in reversed(parts):
            if part in self.outside:
                return self.outside[part]
        return FINAL_NORM if len(parts) >= 2 and parts[-1].endswith("norm") else None

    def config_value(self, config: dict, size: str, layer: int | None = None):
        """A size from config.json by its meaning ("heads", "intermediate", ...): an int, or None. With
        `layer`, a list of per-layer sizes (a GGUF header's head_count of a pruned model) gives that layer's."""
        key = self.config_key(config, size, layer)
        if key is None:
            return None
        return config[key][layer] if isinstance(config[key], list) else config[key]

    def config_key(self, config: dict, size: str, layer: int | None = None) -> str | None:
        """Which key of config.json gives that size (mismatch reports name the key the file uses)."""
        for key in self.config_keys.get(size, CONFIG_KEYS.get(size, ())):
            value = config.get(key)
            if isinstance(value, list) and layer is not None and 0 <= layer < len(value):
                value = value[layer]
            if isinstance(value, int) and not isinstance(value, bool):
                return key
        return None

    def fused_layout(self, config: dict) -> dict[str, Fused]:
        for key, value, fused in self.fused_by_config:
            if config.get(key) == value:
                return {**self.fused, **fused}
        return self.fused

    def is_buffer(self, rest: str) -> bool:
        return rest in self.buffers


@functools.lru_cache(maxsize=4096)  # the same few names in every layer
def expert_number(module: str) -> int | None:
    """"block_sparse_moe.experts.3.w1" -> 3 (and GGUF's legacy "ffn_gate.3" -> 3): the number in a per-expert
    tensor's name; None for a stacked tensor (it holds every expert)."""
    return next((int(part) for part in module.split(".")[1:] if part.isdecimal()), None)


def _numbers_as_stars(module: str) -> str:
    """"experts.3.w1" -> "experts.*.w1": the name per-expert (or per-head) tensors share."""
    first, *rest = module.split(".")
    return ".".join((first, *("*" if part.isdecimal() else part for part in rest)))


def _module(name: str) -> str:
    """"self_attn.q_proj.weight" -> "self_attn.q_proj"; names without a .weight/.bias suffix stay."""
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name


def is_weight(name: str) -> bool:
    return name.endswith(".weight")
