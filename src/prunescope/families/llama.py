"""Llama 2/3 and the families that kept its layout: Mistral, Qwen2/2.5 (q/k/v biases), Qwen3 (q/k
norms), Gemma, Gemma 2 and 3 (pre/post-feedforward norms; Gemma 3's q/k norms), Granite, OLMo (no norm
tensors at all), OLMo-2 (q/k norms spanning the whole projection), StableLM (one q/k LayerNorm per head)."""

from .base import DOWN, GATE, K, K_NORM, NORM, O, Q, Q_NORM, UP, V, Family

ATTENTION = {
    "self_attn.q_proj": Q,
    "self_attn.k_proj": K,
    "self_attn.v_proj": V,
    "self_attn.o_proj": O,
    "self_attn.q_norm": Q_NORM,  # qwen3, gemma3
    "self_attn.k_norm": K_NORM,  # qwen3, gemma3
}
NORMS = {"input_layernorm": NORM, "post_attention_layernorm": NORM}

FAMILY = Family(
    name="llama",
    model_types={"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
                 "gemma2": "Gemma2", "gemma3_text": "Gemma3", "granite": "Granite", "olmo": "Olmo", "olmo2": "Olmo2",
                 "stablelm": "StableLm"},
    layer={
        **ATTENTION,
        "self_attn.q_layernorm.norms.*": Q_NORM,  # stablelm: one LayerNorm per head
        "self_attn.k_layernorm.norms.*": K_NORM,
        "mlp.gate_proj": GATE,
        "mlp.up_proj": UP,
        "mlp.down_proj": DOWN,
        **NORMS,
        "pre_feedforward_layernorm": NORM,  # gemma2, gemma3
        "post_feedforward_layernorm": NORM,  # gemma2, gemma3
    },
)
