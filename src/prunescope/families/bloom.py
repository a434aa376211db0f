"""Bloom: q/k/v fused in query_key_value, interleaved per head; a LayerNorm right after the word
embeddings (word_embeddings_layernorm, outside the layers); ALiBi, so no position tensors."""

from .base import (CONFIG_KEYS, DOWN, EMBEDDING, EMBEDDING_NORM, FINAL_NORM, K, LM_HEAD, NORM, O, PER_HEAD, Q,
                   QKV, UP, V, Family, Fused)

FAMILY = Family(
    name="bloom",
    model_types={"bloom": "Bloom"},
    layer={
        "self_attention.query_key_value": QKV,
        "self_attention.dense": O,
        "mlp.dense_h_to_4h": UP,
        "mlp.dense_4h_to_h": DOWN,
        "input_layernorm": NORM,
        "post_attention_layernorm": NORM,
    },
    attention="self_attention",
    fused={QKV: Fused((Q, K, V), PER_HEAD)},
    outside={"word_embeddings": EMBEDDING, "word_embeddings_layernorm": EMBEDDING_NORM, "ln_f": FINAL_NORM,
             "lm_head": LM_HEAD},
    config_keys={**CONFIG_KEYS, "heads": ("n_head", "num_attention_heads"), "kv_heads": (),
                 "layers": ("n_layer", "num_hidden_layers"), "hidden": ("hidden_size", "n_embed"), "head_dim": ()},
)
