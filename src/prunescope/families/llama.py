"""Llama 2/3 and the families that kept its layout: Mistral, Qwen2/2.5 (q/k/v biases), Qwen3 (q/k
norms), Gemma, Gemma 2 and 3 (pre/post-feedforward norms; Gemma 3's q/k norms)."""

from .base import DOWN, GATE, K, K_NORM, NORM, O, Q, Q_NORM, UP, V, Family

FAMILY = Family(
    name="llama",
    model_types={"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
                 "gemma2": "Gemma2", "gemma3_text": "Gemma3"},
    layer={
        "self_attn.q_proj": Q,
        "self_attn.k_proj": K,
        "self_attn.v_proj": V,
        "self_attn.o_proj": O,
        "self_attn.q_norm": Q_NORM,  # qwen3, gemma3
        "self_attn.k_norm": K_NORM,  # qwen3, gemma3
        "mlp.gate_proj": GATE,
        "mlp.up_proj": UP,
        "mlp.down_proj": DOWN,
        "input_layernorm": NORM,
        "post_attention_layernorm": NORM,
        "pre_feedforward_layernorm": NORM,  # gemma2, gemma3
        "post_feedforward_layernorm": NORM,  # gemma2, gemma3
    },
)
