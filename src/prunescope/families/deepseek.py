"""DeepSeek-V2/V3: multi-head latent attention (q_a_proj/q_a_layernorm/q_b_proj, or one q_proj in
V2-Lite; kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj; no k_proj or v_proj) and Qwen-MoE-style experts
with shared_experts. config.head_dim is the RoPE part (qk_rope_head_dim): a query/key head is
qk_nope_head_dim + qk_rope_head_dim wide. V3's router carries e_score_correction_bias, a buffer; V3's Hub files add a multi-token-prediction
layer after the stack (enorm, hnorm, eh_proj, shared_head), which transformers does not load."""

from .base import CONFIG_KEYS, MLA_PARTS, MTP, NORM, O, Q, Family
from .qwen_moe import MOE_MLP

FAMILY = Family(
    name="deepseek",
    model_types={"deepseek_v2": "DeepseekV2", "deepseek_v3": "DeepseekV3"},
    layer={
        "self_attn.q_proj": Q,
        **{f"self_attn.{part}": part for part in MLA_PARTS},
        "self_attn.o_proj": O,
        **MOE_MLP,
        "input_layernorm": NORM,
        "post_attention_layernorm": NORM,
        **dict.fromkeys(("enorm", "hnorm", "eh_proj", "shared_head.norm", "shared_head.head"), MTP),  # (Hub) V3
    },
    buffers=("mlp.gate.e_score_correction_bias",),
    head_dim_sum=("qk_nope_head_dim", "qk_rope_head_dim"),
    config_keys={**CONFIG_KEYS, "head_dim": (), "expert_intermediate": ("moe_intermediate_size",)},
)
