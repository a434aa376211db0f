"""Qwen2-MoE, Qwen3-MoE, OLMoE and DeepSeek-V2/V3's experts: mlp.gate is the router, routed experts
per expert (mlp.experts.<e>.gate_proj/up_proj/down_proj, what save_pretrained writes) or stacked
(mlp.experts.gate_up_proj [E, 2I, h], down_proj [E, h, I]); shared experts (Qwen2-MoE's shared_expert
and its sigmoid shared_expert_gate, DeepSeek's shared_experts); dense layers keep mlp.gate_proj etc."""

from .base import (CONFIG_KEYS, DOWN, EXPERT_DOWN, EXPERT_GATE, EXPERT_GATE_UP, EXPERT_UP, GATE, ROUTER,
                   SHARED_EXPERT, UP, Family)
from .llama import ATTENTION, NORMS

MOE_MLP = {
    "mlp.gate": ROUTER,
    "mlp.experts.*.gate_proj": EXPERT_GATE,
    "mlp.experts.*.up_proj": EXPERT_UP,
    "mlp.experts.*.down_proj": EXPERT_DOWN,
    "mlp.experts.gate_up_proj": EXPERT_GATE_UP,
    "mlp.experts.down_proj": EXPERT_DOWN,
    "mlp.shared_expert.gate_proj": SHARED_EXPERT,  # qwen2_moe
    "mlp.shared_expert.up_proj": SHARED_EXPERT,
    "mlp.shared_expert.down_proj": SHARED_EXPERT,
    "mlp.shared_expert_gate": SHARED_EXPERT,
    "mlp.shared_experts.gate_proj": SHARED_EXPERT,  # deepseek
    "mlp.shared_experts.up_proj": SHARED_EXPERT,
    "mlp.shared_experts.down_proj": SHARED_EXPERT,
    "mlp.gate_proj": GATE,  # dense layers (mlp_only_layers, first_k_dense_replace)
    "mlp.up_proj": UP,
    "mlp.down_proj": DOWN,
}

FAMILY = Family(
    name="qwen_moe",
    model_types={"qwen2_moe": "Qwen2Moe", "qwen3_moe": "Qwen3Moe", "olmoe": "Olmoe"},
    layer={**ATTENTION, **MOE_MLP, **NORMS},
    config_keys={**CONFIG_KEYS, "expert_intermediate": ("moe_intermediate_size",)},
)
