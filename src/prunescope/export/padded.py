"""`--to hf-padded`: every layer zero-padded back to the base's sizes, so a stock transformers config
describes it and the function is unchanged (no savings).

Why the padding is exact: a padded query head has all-zero q rows and all-zero o_proj columns, so
whatever it attends to adds nothing; a padded MLP channel has zero gate and up rows (silu(0) * 0 = 0)
and a zero down_proj column. Query heads stay with their KV head: transformers (and llama.cpp) pair
query head h with KV head h // (heads / KV heads), so each kept KV head gets as many base KV slots as
its query heads need (copies of it when the layer has more query heads per KV head than the base).
"""

from __future__ import annotations

import os

import numpy as np

from ..families.base import DOWN, GATE, K, O, Q, UP, V
from ..tensors import CheckpointError
from .hf import (LLAMA_LAYOUT, OutTensor, TORCH_DTYPES, bias_flags, carry_tokenizer, hf_config, staged_folder, write_config,
                 write_safetensors, _common_dtype)
from .source import ExportSource, read_array


def export_padded(source: ExportSource, output: str, dtype: str | None = None, tokenizer: str | None = None) -> list[str]:
    if source.family.name not in LLAMA_LAYOUT or any(layer.structure.fused_rows for layer in source.layers):
        raise CheckpointError(source.path, f"--to hf-padded pads Llama-layout models (Llama, Mistral, Qwen, Gemma), "
                                           f"not {source.structure.family}", "use --to hf")
    heads, kv_heads, intermediate = base_sizes(source)
    head_dim = source.structure.head_dim
    biases = bias_flags(source)
    config = hf_config(source, (heads, kv_heads, intermediate), biases)
    tensors = []
    module_of = {}
    for module, role in source.family.layer.items():
        module_of.setdefault(role, module)
    prefix = source.structure.layer_prefix
    # A role with a bias in any layer has one in every layer (Qwen2's q/k/v), zeros where its layer had none.
    with_bias = {role for layer in source.layers for role, projection in layer.projections.items()
                 if projection.bias is not None}
    for position, layer in enumerate(source.layers):
        slots = head_slots(layer.structure.attention.num_heads or 0, layer.structure.attention.num_kv_heads or 0,
                           heads, kv_heads, source.path, layer.structure.layer_idx)
        names = f"{prefix}.{position}."
        for module, norm in layer.norms.items():
            tensors.append(OutTensor(f"{names}{module}.weight", norm.shape, raw=norm))
        plans = {Q: ("rows", slots.q, heads * head_dim), K: ("rows", slots.kv, kv_heads * head_dim),
                 V: ("rows", slots.kv, kv_heads * head_dim), O: ("columns", slots.q, heads * head_dim)}
        channels = layer.structure.mlp.intermediate_size or 0
        if channels > intermediate:
            raise CheckpointError(source.path, f"layer {layer.structure.layer_idx} has {channels} MLP channels, "
                                               f"more than the base's {intermediate}", "give the right --base_model")
        keep = np.arange(channels)
        plans.update({GATE: ("rows", keep, intermediate), UP: ("rows", keep, intermediate),
                      DOWN: ("columns", keep, intermediate)})
        for role, (axis, places, size) in plans.items():
            unit = head_dim if role in (Q, K, V, O) else 1
            wants_bias = role in with_bias or (biases[0] if role in (Q, K, V, O) else biases[1])
            tensors += _padded_projection(source, layer, role, axis, places, size, unit, wants_bias,
                                          names + module_of[role])
        if layer.others:
            raise CheckpointError(source.path, f"layer {layer.structure.layer_idx} holds tensors an export cannot place "
                                               f"({layer.others[0]}, ...)", "export the model with its own tools")
    structure = source.structure
    for role, tensor in source.outside.items():
        tensors.append(OutTensor(tensor.name, tensor.shape, raw=tensor))
    out_dtype = dtype or _common_dtype(source)
    config["dtype"] = TORCH_DTYPES[out_dtype]
    with staged_folder(output) as folder:
        write_safetensors(os.path.join(folder, "model.safetensors"), tensors, out_dtype)
        write_config(folder, config)
        lines = carry_tokenizer(source, folder, tokenizer)
    padded_params = sum(int(np.prod(tensor.shape)) for tensor in tensors)
    return [f"wrote {output}: {len(source.layers)} layers padded to heads {heads}, KV heads {kv_heads}, "
            f"intermediate {intermediate}: exact, but no savings ({padded_params:,} parameters written for "
            f"{structure.total_params:,})", *lines]


def base_sizes(source: ExportSource) -> tuple[int, int, int]:
    """The base's (heads, KV heads, intermediate): from --base_model's config, else the model's own
    config, which pruning tools leave stale, i.e. describing the base."""
    config = source.base_config or source.config
    family = source.family
    sizes = (family.config_value(config, "heads"), family.config_value(config, "kv_heads") or
             family.config_value(config, "heads"), family.config_value(config, "intermediate"))
    if None in sizes:
        raise CheckpointError(source.path, "the base's sizes are unknown (no num_attention_heads / intermediate_size "
                                           "in the config)", "give --base_model")
    return sizes


class HeadSlots:
    """Where each of a layer's query and KV heads goes among the base's heads."""

    def __init__(self, q: np.ndarray, kv: np.ndarray):
        self.q, self.kv = q, kv


def head_slots(layer_heads: int, layer_kv: int, heads: int, kv_heads: int, path: str, layer_idx: int) -> HeadSlots:
    if layer_heads == 0:
        return HeadSlots(np.arange(0), np.arange(0))
    if not layer_kv or layer_heads % layer_kv or heads % kv_heads:
        raise CheckpointError(path, f"layer {layer_idx}: {layer_heads} query heads do not group evenly over "
                                    f"{layer_kv} KV heads", "no runtime pairs them this way")
    group, base_group = layer_heads // layer_kv, heads // kv_heads
    copies = -(-group // base_group)  # base KV slots each kept KV head needs
    if layer_kv * copies > kv_heads:
        raise CheckpointError(path, f"layer {layer_idx}: {layer_heads} heads over {layer_kv} KV heads do not fit the "
                                    f"base's {heads} over {kv_heads} when padded", "use --to gguf")
    q_places, kv_sources = [], []
    for kv in range(layer_kv):
        for copy in range(copies):
            slot = kv * copies + copy
            kv_sources.append(kv)
            for member in range(copy * base_group, min((copy + 1) * base_group, group)):
                q_places.append(slot * base_group + member - copy * base_group)
    # kv: for each base KV slot in use, which of the layer's KV heads it copies.
    return HeadSlots(np.array(q_places), np.array(kv_sources))


def _padded_projection(source, layer, role, axis, places, size, unit, wants_bias, module) -> list[OutTensor]:
    """The base-sized weight (and bias) of one projection, the layer's values placed, zeros elsewhere."""
    projection = layer.projections.get(role)
    hidden = source.structure.hidden_size
    shape = (size, hidden) if axis == "rows" else (hidden, size)
    is_kv = role in (K, V)

    def weight():
        out = np.zeros(shape, np.float32)
        if projection is None:
            return out
        values = read_array(projection.weight).astype(np.float32)
        if axis == "rows":
            blocks = values.reshape(-1, unit, hidden)
            if is_kv:  # base KV slot s holds a copy of the layer's KV head places[s]
                out.reshape(-1, unit, hidden)[: len(places)] = blocks[places]
            else:
                out.reshape(-1, unit, hidden)[places] = blocks
        else:
            out.reshape(hidden, -1, unit)[:, places] = values.reshape(hidden, -1, unit)
        return out

    def bias():
        out = np.zeros(shape[0], np.float32)
        if projection is not None and projection.bias is not None:
            values = read_array(projection.bias).astype(np.float32)
            if axis == "columns":
                out[:] = values  # o_proj / down_proj biases are on the residual side: nothing to place
            elif is_kv:
                out.reshape(-1, unit)[: len(places)] = values.reshape(-1, unit)[places]
            else:
                out.reshape(-1, unit)[places] = values.reshape(-1, unit)
        return out

    out = [OutTensor(module + ".weight", shape, weight)]
    if wants_bias:
        out.append(OutTensor(module + ".bias", (shape[0],), bias))
    return out
