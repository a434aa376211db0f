"""GPT-J: separate q/k/v without biases, attention output called out_proj, fc_in/fc_out MLP without a
gate, one LayerNorm per (parallel) block, an lm_head with a bias."""

from .base import CONFIG_KEYS, DOWN, EMBEDDING, FINAL_NORM, K, LM_HEAD, NORM, O, Q, UP, V, Family

FAMILY = Family(
    name="gptj",
    model_types={"gptj": "GPTJ"},
    layer={
        "attn.q_proj": Q,
        "attn.k_proj": K,
        "attn.v_proj": V,
        "attn.out_proj": O,
        "mlp.fc_in": UP,
        "mlp.fc_out": DOWN,
        "ln_1": NORM,
    },
    attention="attn",
    outside={"wte": EMBEDDING, "ln_f": FINAL_NORM, "lm_head": LM_HEAD},
    buffers=("attn.bias", "attn.masked_bias"),
    config_keys={**CONFIG_KEYS, "layers": ("n_layer",), "heads": ("n_head",), "kv_heads": (),
                 "intermediate": ("n_inner",), "hidden": ("n_embd",), "head_dim": ()},
)
