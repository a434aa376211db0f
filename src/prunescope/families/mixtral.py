"""Mixtral (and Mistral-style MoE): Llama's attention; a sparse MoE block with a router and routed
experts, written per expert as block_sparse_moe.experts.<e>.w1 (gate) / w3 (up) / w2 (down), or
stacked as in memory (mlp.experts.gate_up_proj [E, 2I, h], down_proj [E, h, I]). Mixtral's experts are
intermediate_size wide."""

from .base import (CONFIG_KEYS, EXPERT_DOWN, EXPERT_GATE, EXPERT_GATE_UP, EXPERT_UP, ROUTER, Family)
from .llama import ATTENTION, NORMS

FAMILY = Family(
    name="mixtral",
    model_types={"mixtral": "Mixtral"},
    layer={
        **ATTENTION,
        "block_sparse_moe.gate": ROUTER,
        "block_sparse_moe.experts.*.w1": EXPERT_GATE,
        "block_sparse_moe.experts.*.w3": EXPERT_UP,
        "block_sparse_moe.experts.*.w2": EXPERT_DOWN,
        "mlp.gate": ROUTER,
        "mlp.experts.gate_up_proj": EXPERT_GATE_UP,
        "mlp.experts.down_proj": EXPERT_DOWN,
        **NORMS,
    },
    mlp="block_sparse_moe",
    config_keys={**CONFIG_KEYS, "expert_intermediate": ("intermediate_size",)},
)
