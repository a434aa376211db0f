"""Phi-3: q/k/v fused into qkv_proj ([q heads | k heads | v heads] rows) and gate/up fused into
gate_up_proj (two halves); otherwise Llama's names."""

from .base import DOWN, GATE_UP, NORM, O, QKV, Family

FAMILY = Family(
    name="phi3",
    model_types={"phi3": "Phi3"},
    layer={
        "self_attn.qkv_proj": QKV,
        "self_attn.o_proj": O,
        "mlp.gate_up_proj": GATE_UP,
        "mlp.down_proj": DOWN,
        "input_layernorm": NORM,
        "post_attention_layernorm": NORM,
    },
)
