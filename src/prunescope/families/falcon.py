"""Falcon: q/k/v fused in query_key_value in one of three layouts, chosen by the config: per KV group
(new_decoder_architecture: Falcon-40B/180B), multi-query (Falcon-7B: one k and one v head, whatever
num_kv_heads says) or interleaved per head (Falcon-RW). Parallel attention/MLP with ln_attn/ln_mlp or
one input_layernorm."""

from .base import (CONFIG_KEYS, DOWN, EMBEDDING, FINAL_NORM, K, LM_HEAD, MULTI_QUERY, NORM, O, PER_HEAD,
                   PER_KV_GROUP, Q, QKV, UP, V, Family, Fused)

FAMILY = Family(
    name="falcon",
    model_types={"falcon": "Falcon"},
    layer={
        "self_attention.query_key_value": QKV,
        "self_attention.dense": O,
        "mlp.dense_h_to_4h": UP,
        "mlp.dense_4h_to_h": DOWN,
        "ln_attn": NORM,
        "ln_mlp": NORM,
        "input_layernorm": NORM,
        "post_attention_layernorm": NORM,
    },
    attention="self_attention",
    fused={QKV: Fused((Q, K, V), PER_HEAD)},
    fused_by_config=(("new_decoder_architecture", True, {QKV: Fused((Q, K, V), PER_KV_GROUP)}),
                     ("multi_query", True, {QKV: Fused((Q, K, V), MULTI_QUERY)})),
    outside={"word_embeddings": EMBEDDING, "ln_f": FINAL_NORM, "lm_head": LM_HEAD},
    config_keys={**CONFIG_KEYS, "heads": ("num_attention_heads", "n_head"), "kv_heads": ("num_kv_heads",),
                 "layers": ("num_hidden_layers", "n_layer"), "intermediate": ("ffn_hidden_size",), "head_dim": ()},
)
