"""Tiny real checkpoints, built with transformers and torch at test time (random weights)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

SMALL = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=4, vocab_size=128, max_position_embeddings=64)


def llama(**overrides) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**{**SMALL, **overrides})).eval()


def mistral() -> MistralForCausalLM:
    return MistralForCausalLM(MistralConfig(**SMALL, head_dim=16)).eval()


def qwen2(tied: bool = True) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=tied)).eval()


def qwen3() -> Qwen3ForCausalLM:
    return Qwen3ForCausalLM(Qwen3Config(**SMALL, head_dim=16, tie_word_embeddings=False)).eval()


def gemma() -> GemmaForCausalLM:
    return GemmaForCausalLM(GemmaConfig(**SMALL, head_dim=16)).eval()


def gemma2() -> Gemma2ForCausalLM:
    return Gemma2ForCausalLM(Gemma2Config(**SMALL, head_dim=24)).eval()


def _resized(linear: nn.Linear, out_features: int | None = None, in_features: int | None = None) -> nn.Linear:
    out_features = out_features or linear.out_features
    in_features = in_features or linear.in_features
    smaller = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                        dtype=linear.weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(linear.weight[:out_features, :in_features])
        if linear.bias is not None:
            smaller.bias.copy_(linear.bias[:out_features])
    return smaller


def prune_structurally(model, plan: dict[int, tuple[int, int, int]]) -> None:
    """What LLM-Pruner does to a Llama: per layer, keep `heads` query heads, `kv_heads` KV heads and
    `intermediate` MLP channels, by replacing the Linear modules with smaller ones. The config is left
    as it was (stale), as LLM-Pruner leaves it."""
    head_dim = model.config.head_dim
    for layer_idx, (heads, kv_heads, intermediate) in plan.items():
        layer = model.model.layers[layer_idx]
        attention, mlp = layer.self_attn, layer.mlp
        attention.q_proj = _resized(attention.q_proj, out_features=heads * head_dim)
        attention.k_proj = _resized(attention.k_proj, out_features=kv_heads * head_dim)
        attention.v_proj = _resized(attention.v_proj, out_features=kv_heads * head_dim)
        attention.o_proj = _resized(attention.o_proj, in_features=heads * head_dim)
        mlp.gate_proj = _resized(mlp.gate_proj, out_features=intermediate)
        mlp.up_proj = _resized(mlp.up_proj, out_features=intermediate)
        mlp.down_proj = _resized(mlp.down_proj, in_features=intermediate)


def add_flap_biases(model) -> None:
    """FLAP adds a bias to o_proj and down_proj of every layer (its bias compensation)."""
    for layer in model.model.layers:
        for parent, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
            old = getattr(parent, name)
            new = nn.Linear(old.in_features, old.out_features, bias=True)
            with torch.no_grad():
                new.weight.copy_(old.weight)
            setattr(parent, name, new)


def remove_layers(model, indices: list[int]) -> None:
    """ShortGPT/SLEB: delete decoder layers; the ModuleList renumbers, the config stays stale."""
    for index in sorted(indices, reverse=True):
        del model.model.layers[index]


def remove_experts(model, plan: dict[int, list[int]], block: str = "mlp", router_name: str = "gate") -> None:
    """Expert pruning as NAEE does it, per layer: keep some experts' slices of the stacked expert tensors
    and their router rows (and their routing bias, DeepSeek-V3); the config's expert count is left as
    it was (stale). `plan`: layer index -> the experts kept, in order."""
    for layer_idx, kept in plan.items():
        module = getattr(model.model.layers[layer_idx], block)
        experts, router = module.experts, getattr(module, router_name)
        with torch.no_grad():
            for attr in ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias"):
                if hasattr(experts, attr):
                    setattr(experts, attr, nn.Parameter(getattr(experts, attr)[kept].clone()))
            for attr in ("weight", "bias"):
                if isinstance(getattr(router, attr, None), nn.Parameter):
                    setattr(router, attr, nn.Parameter(getattr(router, attr)[kept].clone()))
            if hasattr(router, "e_score_correction_bias"):
                router.e_score_correction_bias = router.e_score_correction_bias[kept].clone()
        for holder in (experts, router, module):  # the modules' own counts, which their forward uses
            for attr in ("num_experts", "n_routed_experts", "num_local_experts"):
                if isinstance(getattr(holder, attr, None), int):
                    setattr(holder, attr, len(kept))
