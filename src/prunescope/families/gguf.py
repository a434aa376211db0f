"""GGUF files (llama.cpp): one table for llama.cpp's own tensor names (`blk.N.attn_q`, ...), which are
the same for the llama-like architectures it runs (llama, deci); its header keys stand in for the
config's. Chosen by the file format, not by model_type (a GGUF `llama` is not a transformers `llama`)."""

from .base import CONFIG_KEYS, DOWN, EMBEDDING, FINAL_NORM, GATE, K, K_NORM, LM_HEAD, NORM, O, Q, Q_NORM, UP, V, Family

FAMILY = Family(
    name="gguf",
    model_types={"deci": "Deci"},  # llama.cpp's name for per-layer-sized Llamas; GGUF llama is found by format
    layer={
        "attn_q": Q,
        "attn_k": K,
        "attn_v": V,
        "attn_output": O,
        "ffn_gate": GATE,
        "ffn_up": UP,
        "ffn_down": DOWN,
        "attn_q_norm": Q_NORM,  # qwen3, gemma3
        "attn_k_norm": K_NORM,
        "attn_norm": NORM,
        "ffn_norm": NORM,  # other norms (gemma2's post_attention_norm, ...) are norms by their name
    },
    attention="attn",
    mlp="ffn",
    outside={"token_embd": EMBEDDING, "output": LM_HEAD, "output_norm": FINAL_NORM},
    config_keys={**CONFIG_KEYS, "layers": ("block_count",), "heads": ("attention.head_count",),
                 "kv_heads": ("attention.head_count_kv",), "intermediate": ("feed_forward_length",),
                 "hidden": ("embedding_length",), "vocab": ("vocab_size",), "head_dim": ("attention.key_length",)},
)
