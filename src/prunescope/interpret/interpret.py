"""Stage 3: interpret a TensorIndex as a decoder-only LLM: layers, projections, heads, norms.

Every number comes from tensor shapes. Configs are used only for head_dim (which shapes cannot give
on their own) and to report where they disagree with the shapes. Which tensor plays which role is
the family description's business (`prunescope.families`); nothing here names a family's tensors.
"""

from __future__ import annotations

import re

from ..families.windows import attention_windows
from ..families import (LAYER_NAME, SUPPORTED_MODEL_TYPES, choose_family, class_prefix, first_architecture,
                        model_type_from_classes, short_class)
from ..families.base import (ATTENTION_PROJECTIONS, DOWN, MLP_PROJECTIONS, EMBEDDING, FINAL_NORM, GATE, GATE_UP, HEADS, K, LM_HEAD,
                             O, POSITIONS, Q, Q_NORM, QKV, UP, Family, is_weight)
from ..records import Record
from ..tensors import CheckpointError, TensorIndex, TensorInfo
from .structure import AttentionStructure, LayerStructure, MlpStructure, ModelStructure

# Buffers that state dicts of older transformers versions persisted; they are not parameters.
BUFFER_NAME = re.compile(r"(?:^|\.)(?:inv_freq|masked_bias|position_ids|_float_tensor)$")

# head_dim sources (ModelStructure.head_dim_source); the pipeline asks whether one came from the base.
CONFIG_HEAD_DIM = "config head_dim"
Q_NORM_SHAPE = "q_norm shape"
ROTARY_LENGTH = "rotary inv_freq length"
BASE_HEAD_DIM = "base config head_dim"
BASE_RATIO = "base config hidden_size/num_attention_heads"
CONFIG_RATIO = "config hidden_size/num_attention_heads"
UNKNOWN = "unknown"
FROM_BASE = (BASE_HEAD_DIM, BASE_RATIO)

# A layer's tensor as placed by the family description: (name relative to the layer, tensor,
# bucket, role or None, module).
Placed = tuple


class DecoderStack(Record):
    prefix: str  # tensor names in the stack start with "<prefix>.<layer index>."
    layers: dict[int, list[Placed]]  # layer index -> its tensors, placed
    outside: tuple[TensorInfo, ...]  # every counted tensor not in the stack


class OutsideBuckets(Record):
    embedding: int
    positions: int
    lm_head: int
    final_norm: int
    other: int
    other_names: tuple[str, ...]
    embedding_tensor: TensorInfo | None
    lm_head_seen: bool
    lm_head_tensor: TensorInfo | None = None


def interpret(index: TensorIndex, name: str, config: dict | None = None,
              base_config: dict | None = None) -> ModelStructure:
    """Build the structure of one model from its tensors. `config` is the model's own (possibly stale)
    config; `base_config` the unpruned model's, used only as a source of head_dim."""
    config = config or {}
    model_type = str(config.get("model_type") or "")
    family = choose_family(config, index.module_classes, [tensor.name for tensor in index.tensors])
    counted, buffers, aliases = _parameters(index, family)
    _refuse_quantized(index, config)
    stack = _decoder_stack(counted, family)
    if not any(placed[2] in ("attention", "mlp") for tensors in stack.layers.values() for placed in tensors):
        raise CheckpointError(
            index.files[0], f"unknown architecture ({model_type or 'unknown'}): no decoder layers with attention/MLP "
                            "projections found", "supported: " + ", ".join(SUPPORTED_MODEL_TYPES))

    # At this point every tensor of the stack has its role; what follows counts them.
    notes: list[str] = []
    if model_type and model_type not in SUPPORTED_MODEL_TYPES:
        notes.append(f"family {model_type!r} is not one prunescope knows: tensors it cannot place (experts, "
                     "routers, ...) are counted in each layer's `other`; totals stay exact")
    head_dim, head_dim_source = _head_dim(config, base_config, stack, family, index, notes)
    prefix = class_prefix(first_architecture(config)) or family.model_types.get(model_type) or \
        class_prefix(short_class(index.module_classes.get("")))
    names: dict[str, str] = {}
    layers, residual_widths = [], []
    windows = attention_windows(config, len(stack.layers))
    for layer_idx, window in zip(sorted(stack.layers), windows):
        classes = {part: index.module_classes.get(f"{stack.prefix}.{layer_idx}{part}")
                   for part in ("", f".{family.attention}", f".{family.mlp}")}
        layer, residual_width = _layer(layer_idx, stack, family, head_dim, prefix, classes, config, names, notes)
        layers.append(layer.replace(attention_window=window) if window else layer)
        residual_widths.append(residual_width)
    indices = sorted(stack.layers)
    if indices and indices != list(range(indices[0], indices[0] + len(indices))):
        missing = sorted(set(range(indices[0], indices[-1] + 1)) - set(indices))
        notes.append(f"layer indices are not contiguous: {missing} absent (layers kept their original numbers)")
    if any(layer.mlp.gate_proj is None for layer in layers):
        notes.append("MLP without a gate projection: gate_proj is null; " +
                     ", ".join(f"{theirs} is reported as {ours}" for ours, theirs in names.items()
                               if ours in (GATE, UP, DOWN)))

    outside = _outside_buckets(stack.outside, family)
    tied = _tying(outside, aliases, family, config, notes)
    embedding_tensor = outside.embedding_tensor
    structure = ModelStructure(
        model_name=name,
        family=model_type or model_type_from_classes(index.module_classes) or "unknown",
        total_params=sum(tensor.numel for tensor in counted),
        embedding_params=outside.embedding,
        lm_head_params=embedding_tensor.numel if tied and embedding_tensor is not None else outside.lm_head,
        tied_embeddings=tied,
        final_norm_params=outside.final_norm,
        other_params=outside.other,
        layers=tuple(layers),
        hidden_size=_hidden_size(residual_widths, embedding_tensor),
        vocab_size=embedding_tensor.shape[0] if embedding_tensor is not None else None,
        head_dim=head_dim,
        head_dim_source=head_dim_source,
        dtypes=_dtype_counts(counted),
        other_tensors=outside.other_names,
        buffers=tuple(buffers),
        notes=tuple(notes),
        position_embedding_params=outside.positions,
        projection_names=names,
        layer_prefix=stack.prefix,
        lm_head_shape=_lm_head_shape(embedding_tensor if tied else outside.lm_head_tensor),
        outside_weight_shapes=_outside_linears(stack.outside, family),
    )
    assert structure.total_params == (outside.embedding + outside.positions + outside.lm_head + outside.final_norm
                                      + outside.other + structure.total_layer_params), "buckets must add up"
    return _with_mismatches(structure, config, family)


# -- 1) which tensors are parameters ----------------------------------------------------------


def _parameters(index: TensorIndex, family: Family) -> tuple[list[TensorInfo], list[str], dict[str, str]]:
    """(counted parameters, buffer names, alias name -> the tensor it shares storage with)."""
    counted: list[TensorInfo] = []
    buffers: list[str] = []
    for tensor in index.tensors:
        if tensor.is_parameter is False or (tensor.is_parameter is None and BUFFER_NAME.search(tensor.name)):
            buffers.append(tensor.name)
        elif tensor.alias_of is None:
            counted.append(tensor)
    aliases = {tensor.name: tensor.alias_of for tensor in index.tensors if tensor.alias_of}
    # When a tied lm_head came first in the file (sorted state dicts), count the tensor as the
    # embedding and the lm_head as its alias, which is how every model ties them.
    by_name = {tensor.name: tensor for tensor in index.tensors}
    for name, target in list(aliases.items()):
        if _is_embedding_weight(family, name) and family.outside_role(target) == LM_HEAD:
            embedding = by_name[name].replace(alias_of=None)
            counted = [embedding if tensor.name == target else tensor for tensor in counted]
            aliases = {**{key: value for key, value in aliases.items() if key != name}, target: name}
    return counted, buffers, aliases


QUANTIZED_TENSOR = re.compile(r"\.(?:qweight|qzeros|g_idx|scales|absmax|quant_map|quant_state\.[\w.]+|SCB|weight_format)$")


def _refuse_quantized(index: TensorIndex, config: dict) -> None:
    """Packed low-bit weights have shapes that are not parameter counts: refuse, rather than report nonsense."""
    quantization = config.get("quantization_config")
    packed = next((tensor.name for tensor in index.tensors if QUANTIZED_TENSOR.search(tensor.name)), None)
    if quantization or packed:
        method = (quantization or {}).get("quant_method") if isinstance(quantization, dict) else None
        what = method or (packed and f"tensor {packed}")
        raise CheckpointError(index.files[0], f"quantized checkpoint ({what}): packed weights' shapes are not "
                                              "parameter counts", "analyse the unquantized (or dequantized) model")


# -- 2) the decoder stack and what lies outside it --------------------------------------------


def _decoder_stack(counted: list[TensorInfo], family: Family) -> DecoderStack:
    """The decoder stack is the `...layers.N` family holding most tensors; another one (a vision
    tower's encoder layers, say) is not decoder layers and goes to `other`."""
    sizes: dict[str, int] = {}
    for tensor in counted:
        match = LAYER_NAME.match(tensor.name)
        if match:
            sizes[match["prefix"]] = sizes.get(match["prefix"], 0) + 1
    prefix = max(sizes, key=sizes.get) if sizes else ""
    layers: dict[int, list[Placed]] = {}
    outside: list[TensorInfo] = []
    for tensor in counted:
        match = LAYER_NAME.match(tensor.name)
        if match and match["prefix"] == prefix:
            rest = match["rest"]
            layers.setdefault(int(match["index"]), []).append((rest, tensor, *family.place(rest)))
        else:
            outside.append(tensor)
    return DecoderStack(prefix=prefix, layers=layers, outside=tuple(outside))


def _outside_buckets(outside: tuple[TensorInfo, ...], family: Family) -> OutsideBuckets:
    counts = {EMBEDDING: 0, POSITIONS: 0, LM_HEAD: 0, FINAL_NORM: 0, None: 0}
    other_names = []
    embedding_tensor = lm_head_tensor = None
    for tensor in outside:
        role = family.outside_role(tensor.name)
        if role == EMBEDDING and not is_weight(tensor.name):
            role = None
        counts[role] += tensor.numel
        if role is None:
            other_names.append(tensor.name)
        elif role == EMBEDDING:
            embedding_tensor = tensor
        elif role == LM_HEAD and is_weight(tensor.name):
            lm_head_tensor = tensor
    return OutsideBuckets(
        embedding=counts[EMBEDDING], positions=counts[POSITIONS], lm_head=counts[LM_HEAD],
        final_norm=counts[FINAL_NORM], other=counts[None], other_names=tuple(other_names),
        embedding_tensor=embedding_tensor,
        lm_head_seen=any(family.outside_role(tensor.name) == LM_HEAD for tensor in outside),
        lm_head_tensor=lm_head_tensor)


def _outside_linears(outside: tuple[TensorInfo, ...], family: Family) -> dict[str, tuple[int, int]]:
    shapes = {}
    for tensor in outside:
        module = tensor.name.rsplit(".", 1)[0]
        if is_weight(tensor.name) and len(tensor.shape) == 2 and module.rsplit(".", 1)[-1] in family.outside_linears:
            shapes[module] = tuple(tensor.shape)
    return shapes


def _lm_head_shape(tensor: TensorInfo | None) -> tuple[int, ...] | None:
    return tuple(tensor.shape) if tensor is not None and len(tensor.shape) == 2 else None


def _tying(outside: OutsideBuckets, aliases: dict[str, str], family: Family, config: dict, notes: list[str]) -> bool:
    """Whether the LM head is the embedding: an alias says so, or a missing head tensor does."""
    head_alias = next((alias for alias_name, alias in aliases.items()
                       if family.outside_role(alias_name) == LM_HEAD), None)
    if head_alias is not None and _is_embedding_weight(family, head_alias):
        return True
    if not outside.lm_head_seen and outside.embedding_tensor is not None:
        if config.get("tie_word_embeddings", True) is False:
            notes.append("no lm_head tensor although the config says the embeddings are not tied")
            return False
        return True
    if outside.lm_head_seen and outside.embedding_tensor is not None and config.get("tie_word_embeddings") is True:
        notes.append("the config says tie_word_embeddings, but the file holds a separate lm_head tensor: both are "
                     "counted (loading it with transformers would tie them and count one)")
    return False


def _is_embedding_weight(family: Family, name: str) -> bool:
    return is_weight(name) and family.outside_role(name) == EMBEDDING


def _hidden_size(residual_widths: list[int | None], embedding_tensor) -> int | None:
    """The width of the residual stream: what the attention writes back (o_proj rows), which is the
    embedding width too, except where an embedding projection sits between them (OPT-350m)."""
    for width in residual_widths:
        if width:
            return width
    if embedding_tensor is not None and len(embedding_tensor.shape) == 2:
        return embedding_tensor.shape[1]
    return None


# -- 3) one layer -----------------------------------------------------------------------------


def _layer(layer_idx, stack, family, head_dim, prefix, classes, config, names, notes) -> tuple[LayerStructure, int | None]:
    """The layer's structure, and its residual width (rows of the attention output projection)."""
    tensors = stack.layers[layer_idx]
    buckets = {"attention": 0, "mlp": 0, "qk_norm": 0, "attention_other": 0, "mlp_other": 0, "norm": 0,
               "shortcut": 0, "other": 0}
    projections: dict[str, int | None] = {}  # role -> parameters (weight and bias)
    weights: dict[str, tuple[int, ...]] = {}  # role -> weight shape
    modules: dict[str, str] = {}  # role -> the tensor's full name without .weight/.bias
    for rest, tensor, bucket, role, module in tensors:
        buckets[bucket] += tensor.numel
        if bucket in ("attention", "mlp"):
            projections[role] = projections.get(role, 0) + tensor.numel
            modules[role] = module
            if is_weight(rest):
                weights[role] = tensor.shape
    for role, module in modules.items():
        if role != module.rsplit(".", 1)[-1]:
            names[role] = module.rsplit(".", 1)[-1]
    rows = {role: shape[0] for role, shape in weights.items() if shape}
    residual_width = rows.get(O)
    fused_rows = {}
    for fused in [role for role in projections if role in family.fused]:
        parts = _split_fused(fused, family, projections, rows, head_dim, config, layer_idx, notes)
        for part in family.fused[fused].parts:
            names[part] = f"{modules[fused].rsplit('.', 1)[-1]} (split)"
        if parts and fused in weights:
            fused_rows[f"{stack.prefix}.{layer_idx}.{modules[fused]}.weight"] = parts
    weight_shapes = _weight_shapes(weights, rows, tensors, family)

    def heads(projection: str) -> int | None:
        if projection not in rows:
            return None if projection in projections else 0
        if head_dim is None:
            return None
        if rows[projection] % head_dim:
            notes.append(f"layer {layer_idx}: {projection} has {rows[projection]} rows, not a multiple of head_dim {head_dim}")
            return None
        return rows[projection] // head_dim

    q, k, v, o = (projections.get(role) or 0 for role in ATTENTION_PROJECTIONS)
    attention = AttentionStructure(
        type=short_class(classes[f".{family.attention}"]) or f"{prefix}Attention",
        total=buckets["attention"] + buckets["qk_norm"] + buckets["attention_other"],
        q_proj=q, k_proj=k, v_proj=v, o_proj=o,
        num_heads=heads(Q), num_kv_heads=heads(K), qk_norm=buckets["qk_norm"], other=buckets["attention_other"])
    has_gate = GATE in projections or UP not in projections
    has_mlp_module = classes[f".{family.mlp}"] is not None or any(
        rest.startswith(family.mlp + ".") for rest, *_ in tensors)
    mlp = MlpStructure(
        type=short_class(classes[f".{family.mlp}"]) or (f"{prefix}MLP" if has_mlp_module
                                                         else short_class(classes[""]) or f"{prefix}DecoderLayer"),
        total=buckets["mlp"] + buckets["mlp_other"],
        gate_proj=(projections.get(GATE) or 0) if has_gate else None,
        up_proj=projections.get(UP) or 0, down_proj=projections.get(DOWN) or 0,
        intermediate_size=rows.get(GATE, rows.get(UP, 0)),
        other=buckets["mlp_other"])
    widths = {}
    if buckets["shortcut"]:
        widths = {"attention_input": _columns(weights, (Q, QKV)),
                  "attention_output": residual_width,
                  "mlp_input": _columns(weights, (GATE, UP, GATE_UP)),
                  "mlp_output": rows.get(DOWN)}
    total = attention.total + mlp.total + buckets["norm"] + buckets["shortcut"] + buckets["other"]
    layer = LayerStructure(
        layer_idx=layer_idx, total=total, attention=attention, mlp=mlp, norm=buckets["norm"],
        other=buckets["other"], shortcut=buckets["shortcut"], widths=widths, weight_shapes=weight_shapes,
        tensor_roles={tensor.name: (bucket, role) for _, tensor, bucket, role, _ in tensors},
        fused_rows=fused_rows)
    return layer, residual_width


def _weight_shapes(weights, rows, tensors, family: Family) -> dict[str, tuple[int, int]]:
    """(out, in) of each projection's weight by its schema name, a fused weight's parts with their own
    rows (the split has filled `rows`); SliceGPT's shortcut matrices by their own names."""
    stored = dict(weights)
    for fused, description in family.fused.items():
        if fused in weights:
            stored.update(dict.fromkeys(description.parts, weights[fused]))
    shapes = {role: (rows[role], stored[role][1]) for role in ATTENTION_PROJECTIONS + MLP_PROJECTIONS
              if role in stored and len(stored[role]) == 2 and rows.get(role) is not None}
    for _, tensor, bucket, _, module in tensors:
        if bucket == "shortcut" and len(tensor.shape) == 2:
            shapes[module] = tuple(tensor.shape)
    return shapes


def _columns(weights, roles) -> int | None:
    return next((weights[role][1] for role in roles if role in weights and len(weights[role]) == 2), None)


def _split_fused(fused, family, projections, rows, head_dim, config, layer_idx, notes):
    """Share a fused projection's parameters among its parts in proportion to their rows; returns the
    parts' row ranges ((role, first row, end row), ...), or None when the rows cannot be divided."""
    count = projections.pop(fused)
    total_rows = rows.pop(fused, None)
    description = family.fused[fused]
    if description.split == HEADS:
        split_rows = _qkv_rows(total_rows, head_dim, config, family, layer_idx, notes)
    else:  # halves
        split_rows = (total_rows // 2, total_rows // 2) if total_rows else None
    if not split_rows or not total_rows:
        for part in description.parts:
            projections[part] = None
        return None
    ranges, start = [], 0
    for part, part_rows in zip(description.parts, split_rows):
        projections[part] = count * part_rows // total_rows
        rows[part] = part_rows
        ranges.append((part, start, start + part_rows))
        start += part_rows
    return tuple(ranges)


def _qkv_rows(total_rows, head_dim, config, family, layer_idx, notes):
    """How a fused qkv_proj's rows divide into q, k and v: (heads + 2 * kv_heads) * head_dim rows. The
    config's head counts are used when they fit the rows; else its query-per-KV group size."""
    if not total_rows or not head_dim or total_rows % head_dim:
        notes.append(f"layer {layer_idx}: cannot split qkv_proj ({total_rows} rows) without a head_dim")
        return None
    slots = total_rows // head_dim
    heads = family.config_value(config, "heads")
    kv_heads = family.config_value(config, "kv_heads") if family.config_value(config, "kv_heads") is not None else heads
    if heads is not None and kv_heads is not None and heads + 2 * kv_heads == slots:
        return heads * head_dim, kv_heads * head_dim, kv_heads * head_dim
    if heads is not None and kv_heads and heads % kv_heads == 0:
        group = heads // kv_heads
        if slots % (group + 2) == 0:
            kv = slots // (group + 2)
            return group * kv * head_dim, kv * head_dim, kv * head_dim
    notes.append(f"layer {layer_idx}: qkv_proj has {slots} heads' rows, which no q/kv split of the config fits")
    return None


# -- 4) head_dim ------------------------------------------------------------------------------


def _head_dim(config, base_config, stack: DecoderStack, family: Family, index: TensorIndex, notes) -> tuple[int | None, str]:
    """The first candidate that divides every layer's q and k rows, in order of trust: what a file
    states or measures (head_dim, q/k norm widths, rotary frequencies) before ratios of sizes."""
    candidates: list[tuple[object, str]] = [(family.config_value(config, "head_dim"), CONFIG_HEAD_DIM)]
    q_norm = next((tensor for tensors in stack.layers.values() for rest, tensor, _, role, _ in tensors
                   if role == Q_NORM and is_weight(rest) and tensor.shape), None)
    if q_norm is not None:
        candidates.append((q_norm.shape[0], Q_NORM_SHAPE))
    if (config.get("partial_rotary_factor") or 1) == 1:  # partial rotary: inv_freq covers part of a head
        inv_freq = next((tensor for tensor in index.tensors if tensor.name.endswith("inv_freq") and tensor.shape), None)
        if inv_freq is not None:
            candidates.append((2 * inv_freq.shape[0], ROTARY_LENGTH))
    if base_config:
        candidates.append((family.config_value(base_config, "head_dim"), BASE_HEAD_DIM))
        candidates.append((_ratio(base_config, family), BASE_RATIO))
    candidates.append((_ratio(config, family), CONFIG_RATIO))
    weights = [(role, tensor.shape[0]) for tensors in stack.layers.values() for rest, tensor, _, role, _ in tensors
               if is_weight(rest) and tensor.shape and role in (Q, QKV, K)]
    rows = [row for role, row in weights if role != K] + [row for role, row in weights if role == K]
    rejected = []
    for value, source in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if all(row % value == 0 for row in rows):
                if rejected:
                    notes.append(f"head_dim from {source}; rejected {', '.join(rejected)} (does not divide the q/k rows)")
                if source == CONFIG_RATIO and not _fits_config(stack, config, family, value):
                    # hidden/heads is right for an unpruned config; with pruned, updated head counts it
                    # is not (hidden_size stays), and a stale config cannot say which.
                    notes.append(f"head_dim {value} is a guess from hidden_size/num_attention_heads, which pruning "
                                 "may have changed: give --base_model or set head_dim in config.json to be sure")
                return value, source
            rejected.append(f"{value} from {source}")
    notes.append("head_dim unknown: heads cannot be counted (give a config.json or --base_model)")
    return None, UNKNOWN


def _fits_config(stack: DecoderStack, config: dict, family: Family, head_dim: int) -> bool:
    """Whether every layer's q (or fused qkv) rows are what the config's head counts say."""
    heads = family.config_value(config, "heads")
    kv_heads = family.config_value(config, "kv_heads") or heads
    for tensors in stack.layers.values():
        for rest, tensor, _, role, _ in tensors:
            if not is_weight(rest) or heads is None:
                continue
            if role == Q and tensor.shape[0] != heads * head_dim:
                return False
            if role == QKV and tensor.shape[0] != (heads + 2 * kv_heads) * head_dim:
                return False
    return True


def _ratio(config: dict, family: Family) -> int | None:
    hidden, heads = family.config_value(config, "hidden"), family.config_value(config, "heads")
    if hidden is not None and heads and hidden % heads == 0:
        return hidden // heads
    return None


# -- 5) names, dtypes and the config's word against the shapes --------------------------------


def _dtype_counts(tensors) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tensor in tensors:
        counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel
    return counts


def _with_mismatches(structure: ModelStructure, config: dict, family: Family) -> ModelStructure:
    """Where the config's numbers disagree with the shapes, say so (pruning tools leave configs stale)."""
    if not config:
        return structure
    layers = structure.layers
    mismatches = []

    def check(field_name, configured, actual_by_layer):
        if configured is None:
            return
        differing = {layer_idx: value for layer_idx, value in actual_by_layer if value is not None and value != configured}
        if differing:
            values = sorted(set(differing.values()))
            mismatches.append({"field": field_name, "config": configured,
                               "actual": values[0] if len(values) == 1 else values, "layers": sorted(differing),
                               "per_layer": {str(idx): value for idx, value in sorted(differing.items())}})

    configured_layers = family.config_value(config, "layers")
    if configured_layers is not None and configured_layers != len(layers):
        mismatches.append({"field": "num_hidden_layers", "config": configured_layers, "actual": len(layers),
                           "layers": []})
    heads = family.config_value(config, "heads")
    # Layers whose attention or MLP prunescope could not place (unknown families) say nothing here.
    with_attention = [layer for layer in layers if layer.attention.total]
    with_mlp = [layer for layer in layers if layer.mlp.total]
    check("num_attention_heads", heads, [(layer.layer_idx, layer.attention.num_heads) for layer in with_attention])
    check("num_key_value_heads", family.config_value(config, "kv_heads") or heads,
          [(layer.layer_idx, layer.attention.num_kv_heads) for layer in with_attention])
    check("intermediate_size", family.config_value(config, "intermediate"),
          [(layer.layer_idx, layer.mlp.intermediate_size) for layer in with_mlp])
    for field_name, size, actual in (("hidden_size", "hidden", structure.hidden_size),
                                     ("vocab_size", "vocab", structure.vocab_size)):
        configured = family.config_value(config, size)
        if configured is not None and actual is not None and configured != actual:
            mismatches.append({"field": field_name, "config": configured, "actual": actual, "layers": []})
    return structure.replace(config_mismatches=tuple(mismatches)) if mismatches else structure
