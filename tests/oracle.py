"""Test oracles: counts taken from real torch modules built by transformers, never from prunescope.

Every expected number in the tests comes from here: `named_parameters`, `parameters()`,
`num_parameters()` and module shapes of the very model that was written to disk.
"""

from __future__ import annotations

import torch
from torch import nn


def count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def head_dim_of(model) -> int:
    config = model.config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def decoder_layers(model):
    inner = model.model
    return getattr(inner, "layers", None) or inner.language_model.layers


def expected_structure(model, head_dim: int | None = None) -> dict:
    """What model_structure.json must say about `model`, computed from the module itself."""
    head_dim = head_dim or head_dim_of(model)
    layers = []
    for layer in decoder_layers(model):
        attention, mlp = layer.self_attn, layer.mlp
        norms = [child for name, child in layer.named_children() if name.endswith("norm")]
        layers.append({
            "total": count(layer),
            "attention": {
                "total": count(attention),
                "q_proj": count(attention.q_proj), "k_proj": count(attention.k_proj),
                "v_proj": count(attention.v_proj), "o_proj": count(attention.o_proj),
                "num_heads": attention.q_proj.weight.shape[0] // head_dim,
                "num_kv_heads": attention.k_proj.weight.shape[0] // head_dim,
            },
            "mlp": {
                "total": count(mlp),
                "gate_proj": count(mlp.gate_proj), "up_proj": count(mlp.up_proj), "down_proj": count(mlp.down_proj),
                "intermediate_size": mlp.gate_proj.weight.shape[0],
            },
            "norm": sum(count(norm) for norm in norms),
            "is_zero_layer": all(bool((parameter == 0).all())
                                 for part in (attention, mlp) for parameter in part.parameters()),
        })
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return {
        "total_params": model.num_parameters(),
        "embedding_params": embedding.numel(),
        "lm_head_params": head.numel(),
        "tied_embeddings": head is embedding,
        "layers": layers,
        "num_layers": len(layers),
    }


def assert_matches(structure_dict: dict, model, head_dim: int | None = None) -> None:
    """Every count prunescope wrote equals the module's own."""
    expected = expected_structure(model, head_dim)
    assert structure_dict["total_params"] == expected["total_params"]
    assert structure_dict["total_params"] == sum(p.numel() for _, p in model.named_parameters())
    assert structure_dict["embedding_params"] == expected["embedding_params"]
    assert structure_dict["lm_head_params"] == expected["lm_head_params"]
    assert structure_dict["tied_embeddings"] == expected["tied_embeddings"]
    assert structure_dict["layer_summary"]["num_layers"] == expected["num_layers"]
    assert structure_dict["layer_summary"]["total_layer_params"] == sum(layer["total"] for layer in expected["layers"])
    for got, want in zip(structure_dict["layers"], expected["layers"], strict=True):
        assert got["total"] == want["total"]
        assert got["norm"] == want["norm"]
        assert got["is_zero_layer"] == want["is_zero_layer"]
        for part in ("attention", "mlp"):
            for key, value in want[part].items():
                assert got[part][key] == value, (got["layer_idx"], part, key)


def zero_layer_(layer: nn.Module, negative: bool = False) -> None:
    """Zero a layer's attention and MLP in place; with `negative`, half the zeros are -0.0."""
    with torch.no_grad():
        for part in (layer.self_attn, layer.mlp):
            for parameter in part.parameters():
                parameter.zero_()
                if negative:
                    flat = parameter.view(-1)
                    flat[::2] = -0.0


# -- per-family oracles ----------------------------------------------------------------------------
# A test describes its family as a map from the schema's names to functions of transformers' own
# modules (written in the test from the module attributes, not from prunescope's tables):
#   {"layers": model -> decoder layers, "attention": {field: layer -> value}, "mlp": {...},
#    "layer": {field: layer -> value}, "model": {field: model -> value}}


def check_family(structure_dict: dict, model, family: dict) -> None:
    """Every field `family` names equals what the module says, layer by layer; totals are the module's."""
    assert structure_dict["total_params"] == model.num_parameters()
    assert structure_dict["total_params"] == sum(p.numel() for _, p in model.named_parameters())
    for field, value in family.get("model", {}).items():
        assert structure_dict[field] == value(model), field
    layers = list(family["layers"](model))
    assert structure_dict["layer_summary"]["num_layers"] == len(layers)
    assert structure_dict["layer_summary"]["total_layer_params"] == sum(count(layer) for layer in layers)
    for got, layer in zip(structure_dict["layers"], layers, strict=True):
        assert got["total"] == count(layer), got["layer_idx"]
        for field, value in family.get("layer", {}).items():
            assert got[field] == value(layer), (got["layer_idx"], field)
        for section in ("attention", "mlp"):
            for field, value in family[section].items():
                assert got[section].get(field) == value(layer), (got["layer_idx"], section, field)


def rows_of(weight: torch.Tensor, bias: torch.Tensor | None, rows) -> int:
    """Parameters of some output rows of a Linear (weight and bias)."""
    rows = list(rows)
    return weight[rows].numel() + (bias[rows].numel() if bias is not None else 0)


def active_params(model, routed_experts, top_k: int) -> int:
    """Parameters one token meets: all but the routed experts, plus top_k experts per MoE layer.
    `routed_experts(layer)` gives (parameters of the layer's routed experts, how many) or None."""
    active = model.num_parameters()
    for layer in decoder_layers(model):
        routed = routed_experts(layer)
        if routed is not None:
            params, experts = routed
            active += round(min(top_k, experts) * params / experts) - params
    return active
