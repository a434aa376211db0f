"""Phi-2: attention output called dense, an MLP without a gate (fc1/fc2), one norm per layer shared
by the parallel attention and MLP, optional q/k layernorms, partial rotary embeddings."""

from .base import DOWN, FINAL_NORM, K, K_NORM, NORM, O, OUTSIDE, Q, Q_NORM, UP, V, Family

FAMILY = Family(
    name="phi",
    model_types={"phi": "Phi"},
    layer={
        "self_attn.q_proj": Q,
        "self_attn.k_proj": K,
        "self_attn.v_proj": V,
        "self_attn.dense": O,
        "self_attn.q_layernorm": Q_NORM,
        "self_attn.k_layernorm": K_NORM,
        "mlp.fc1": UP,
        "mlp.fc2": DOWN,
        "input_layernorm": NORM,
    },
    outside={**OUTSIDE, "final_layernorm": FINAL_NORM},
)
