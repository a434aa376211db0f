"""OPT: attention output called out_proj, an MLP without a gate whose fc1/fc2 sit directly in the
layer, learned position embeddings, and (OPT-350m) project_in/project_out around the stack."""

from .base import CONFIG_KEYS, DOWN, FINAL_NORM, K, NORM, O, OUTSIDE, Q, UP, V, Family

FAMILY = Family(
    name="opt",
    model_types={"opt": "OPT"},
    layer={
        "self_attn.q_proj": Q,
        "self_attn.k_proj": K,
        "self_attn.v_proj": V,
        "self_attn.out_proj": O,
        "fc1": UP,
        "fc2": DOWN,
        "self_attn_layer_norm": NORM,
        "final_layer_norm": NORM,
    },
    outside={**OUTSIDE, "final_layer_norm": FINAL_NORM},
    config_keys={**CONFIG_KEYS, "intermediate": ("ffn_dim",)},
    outside_linears=("project_in", "project_out"),  # OPT-350m: word_embed_proj_dim <-> hidden_size
)
