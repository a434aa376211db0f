"""MoE families whose files hold stacked experts natively. Granite-MoE: block_sparse_moe.input_linear
[E, 2I, h] (gate and up halves), output_linear [E, h, I], router.layer. GPT-OSS: mlp.experts.gate_up_proj
[E, h, 2I] with gate/up columns interleaved, down_proj [E, I, h], their biases, mlp.router with a bias.
Llama-4 text: feed_forward.experts.gate_up_proj [E, h, 2I], down_proj [E, I, h], feed_forward.router,
a shared_expert; dense layers keep feed_forward.gate_proj etc."""

from .base import (CONFIG_KEYS, DOWN, EXPERT_DOWN, EXPERT_GATE_UP, GATE, ROUTER, SHARED_EXPERT, UP, Family,
                   Stacked)
from .llama import ATTENTION, NORMS

GRANITE_MOE = Family(
    name="granitemoe",
    model_types={"granitemoe": "GraniteMoe"},
    layer={
        **ATTENTION,
        "block_sparse_moe.router.layer": ROUTER,
        "block_sparse_moe.input_linear": EXPERT_GATE_UP,
        "block_sparse_moe.output_linear": EXPERT_DOWN,
        "block_sparse_moe.router": ROUTER,  # the names in memory (save_original_format=False)
        "block_sparse_moe.experts.gate_up_proj": EXPERT_GATE_UP,
        "block_sparse_moe.experts.down_proj": EXPERT_DOWN,
        **NORMS,
    },
    mlp="block_sparse_moe",
    config_keys={**CONFIG_KEYS, "expert_intermediate": ("intermediate_size",)},
)

GPT_OSS = Family(
    name="gpt_oss",
    model_types={"gpt_oss": "GptOss"},
    layer={
        **ATTENTION,
        "mlp.router": ROUTER,
        "mlp.experts.gate_up_proj": EXPERT_GATE_UP,
        "mlp.experts.gate_up_proj_bias": EXPERT_GATE_UP,
        "mlp.experts.down_proj": EXPERT_DOWN,
        "mlp.experts.down_proj_bias": EXPERT_DOWN,
        **NORMS,
    },
    stacked=Stacked(out_in=False, interleaved=True),
    config_keys={**CONFIG_KEYS, "expert_intermediate": ("intermediate_size",)},
)

LLAMA4 = Family(
    name="llama4",
    model_types={"llama4_text": "Llama4"},
    layer={
        **ATTENTION,
        "feed_forward.router": ROUTER,
        "feed_forward.experts.gate_up_proj": EXPERT_GATE_UP,
        "feed_forward.experts.down_proj": EXPERT_DOWN,
        "feed_forward.shared_expert.gate_proj": SHARED_EXPERT,
        "feed_forward.shared_expert.up_proj": SHARED_EXPERT,
        "feed_forward.shared_expert.down_proj": SHARED_EXPERT,
        "feed_forward.gate_proj": GATE,
        "feed_forward.up_proj": UP,
        "feed_forward.down_proj": DOWN,
        **NORMS,
    },
    mlp="feed_forward",
    stacked=Stacked(out_in=False),
    config_keys={**CONFIG_KEYS, "expert_intermediate": ("intermediate_size",),
                 "intermediate": ("intermediate_size_mlp",)},
)
