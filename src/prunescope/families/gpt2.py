"""GPT-2: Conv1D weights stored [in, out], q/k/v fused in c_attn as three blocks of columns
(q heads | k heads | v heads), learned position embeddings (wpe), an MLP without a gate. Older Hub
files carry the causal mask attn.bias and attn.masked_bias (buffers), some without `transformer.`."""

from .base import (CONFIG_KEYS, DOWN, EMBEDDING, FINAL_NORM, LM_HEAD, NORM, O, POSITIONS, QKV, UP, Family)

FAMILY = Family(
    name="gpt2",
    model_types={"gpt2": "GPT2"},
    layer={
        "attn.c_attn": QKV,
        "attn.c_proj": O,
        "mlp.c_fc": UP,
        "mlp.c_proj": DOWN,
        "ln_1": NORM,
        "ln_2": NORM,
    },
    attention="attn",
    transposed=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    outside={"wte": EMBEDDING, "wpe": POSITIONS, "ln_f": FINAL_NORM, "lm_head": LM_HEAD},
    buffers=("attn.bias", "attn.masked_bias"),
    config_keys={**CONFIG_KEYS, "layers": ("n_layer",), "heads": ("n_head",), "kv_heads": (),
                 "intermediate": ("n_inner",), "hidden": ("n_embd",), "head_dim": ()},
)
