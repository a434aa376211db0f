"""GPT-NeoX / Pythia: q/k/v fused in query_key_value, interleaved per head ([q_h, k_h, v_h] for each
head), the head written as embed_out. Older Hub files carry attention.bias, attention.masked_bias and
attention.rotary_emb.inv_freq (buffers)."""

from .base import (CONFIG_KEYS, DOWN, EMBEDDING, FINAL_NORM, K, LM_HEAD, NORM, O, PER_HEAD, Q, QKV, UP, V,
                   Family, Fused)

FAMILY = Family(
    name="gpt_neox",
    model_types={"gpt_neox": "GPTNeoX"},
    layer={
        "attention.query_key_value": QKV,
        "attention.dense": O,
        "mlp.dense_h_to_4h": UP,
        "mlp.dense_4h_to_h": DOWN,
        "input_layernorm": NORM,
        "post_attention_layernorm": NORM,
    },
    attention="attention",
    fused={QKV: Fused((Q, K, V), PER_HEAD)},
    outside={"embed_in": EMBEDDING, "embed_out": LM_HEAD, "lm_head": LM_HEAD, "final_layer_norm": FINAL_NORM},
    buffers=("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq"),
    config_keys={**CONFIG_KEYS, "kv_heads": (), "head_dim": ()},
)
