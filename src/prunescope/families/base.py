"""The vocabulary every family description uses: roles, and the Family record that maps a family's
tensor names to them. Role names are the output schema's names, so a description reads like the JSON.

A tensor is named `<layer_prefix>.<N>.<module>.<weight|bias>` inside the decoder stack and
`<module>.<weight|bias>` outside it; descriptions map `<module>` to a role, as llama.cpp's
`gguf-py/gguf/tensor_mapping.py` does for its architectures. `.weight` and `.bias` are suffixes, not
part of the names.
"""

from __future__ import annotations

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

# -- roles outside the decoder stack ------------------------------------------------------------
EMBEDDING, POSITIONS, LM_HEAD, FINAL_NORM = "embedding", "position_embedding", "lm_head", "final_norm"

# -- buckets: where a layer's tensor is counted in the output -----------------------------------
# attention / mlp: a projection (the role says which); qk_norm: inside the attention as well;
# attention_other / mlp_other: anything else inside those modules; norm, shortcut, other: the layer's.
BUCKETS = {Q: "attention", K: "attention", V: "attention", O: "attention", QKV: "attention",
           GATE: "mlp", UP: "mlp", DOWN: "mlp", GATE_UP: "mlp",
           Q_NORM: "qk_norm", K_NORM: "qk_norm", NORM: "norm", SHORTCUT: "shortcut"}
ATTENTION_BUCKETS = ("attention", "qk_norm", "attention_other")
MLP_BUCKETS = ("mlp", "mlp_other")

# How a fused projection's rows divide into its parts, in row order.
HEADS = "heads"  # [q heads | k heads | v heads], counts from the head layout (Phi-3)
HALVES = "halves"  # two equal halves (Phi-3's gate_up_proj)


class Fused(Record):
    parts: tuple[str, ...]  # roles, in the order their rows are stored
    split: str  # HEADS or HALVES


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
               "hidden": ("hidden_size",), "vocab": ("vocab_size",), "head_dim": ("head_dim",)}


class Family(Record):
    """One family's (or one shared layout's) tensor names, as data."""

    name: str  # the description's name, e.g. "llama" for all the Llama-like families
    model_types: dict[str, str]  # config.json model_type -> transformers' class-name prefix
    layer: dict[str, str]  # module inside a decoder layer -> role
    attention: str = "self_attn"  # the attention module; unknown tensors under it are attention_other
    mlp: str = "mlp"  # the MLP module; unknown tensors under it are mlp_other
    outside: dict[str, str] = OUTSIDE  # module name part outside the layers -> role
    fused: dict[str, Fused] = FUSED  # fused role -> its parts
    config_keys: dict[str, tuple[str, ...]] = CONFIG_KEYS
    # Linear layers outside the decoder stack that every token passes through besides the LM head (their
    # parameters stay in `other`; their matmuls count as FLOPs): module name part -> nothing else needed.
    outside_linears: tuple[str, ...] = ()

    def place(self, rest: str) -> tuple[str, str | None, str]:
        """(bucket, role or None, module) of a tensor named `rest` relative to its layer."""
        module = _module(rest)
        role = self.layer.get(module) or COMMON_LAYER.get(module)
        if role is not None:
            return BUCKETS[role], role, module
        if module.startswith(self.attention + "."):
            return "attention_other", None, module
        if module.startswith(self.mlp + "."):
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

    def config_value(self, config: dict, size: str):
        """A size from config.json by its meaning ("heads", "intermediate", ...): an int, or None."""
        for key in self.config_keys[size]:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None


def _module(name: str) -> str:
    """"self_attn.q_proj.weight" -> "self_attn.q_proj"; names without a .weight/.bias suffix stay."""
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name


def is_weight(name: str) -> bool:
    return name.endswith(".weight")
