"""Stage 3: interpret a TensorIndex as a decoder-only LLM: layers, projections, heads, norms.

Every number comes from tensor shapes. Configs are used only for head_dim (which shapes cannot give
on their own) and to report where they disagree with the shapes. Which tensor plays which role is
the family description's business (`prunescope.families`); nothing here names a family's tensors.
"""

from __future__ import annotations

from collections import Counter
from operator import itemgetter

from ..families.windows import attention_windows
from ..families import (LAYER_NAME, SUPPORTED_MODEL_TYPES, choose_family, class_prefix, first_architecture,
                        model_type_from_classes, short_class)
from ..families.base import (ATTENTION_PROJECTIONS, DOWN, EMBEDDING, EMBEDDING_NORM, FINAL_NORM, GATE, GATE_UP,
                             HALVES, LM_HEAD, MLP_PROJECTIONS, MTP, MULTI_QUERY, PER_HEAD, PER_KV_GROUP, POSITIONS, K,
                             O, Q, Q_NORM, QKV, ROUTER, SHARED_EXPERT, UP, V, Family, is_weight)
from ..records import Record
from ..tensors import CheckpointError, TensorIndex, TensorInfo
from .structure import AttentionStructure, LayerStructure, MlpStructure, ModelStructure

# Buffers that state dicts of older transformers versions persisted (the last part of the name); they
# are not parameters.
BUFFER_NAMES = frozenset({"inv_freq", "masked_bias", "position_ids", "_float_tensor"})

# head_dim sources (ModelStructure.head_dim_source); the pipeline asks whether one came from the base.
CONFIG_HEAD_DIM = "config head_dim"
CONFIG_HEAD_DIM_SUM = "config "  # + the family's keys, e.g. "config qk_nope_head_dim+qk_rope_head_dim"
Q_NORM_SHAPE = "q_norm shape"
ROTARY_LENGTH = "rotary inv_freq length"
BASE_HEAD_DIM = "base config head_dim"
BASE_RATIO = "base config hidden_size/num_attention_heads"
CONFIG_RATIO = "config hidden_size/num_attention_heads"
UNKNOWN = "unknown"
FROM_BASE = (BASE_HEAD_DIM, BASE_RATIO)

# A layer's tensor as placed by the family description: (name relative to the layer, tensor,
# bucket, role or None, module). A layer's tensors are in the order of their names.
Placed = tuple


class DecoderStack(Record):
    prefix: str  # tensor names in the stack start with "<prefix>.<layer index>."
    layers: dict[int, list[Placed]]  # layer index -> its tensors, placed
    outside: tuple[TensorInfo, ...]  # every counted tensor not in the stack


class OutsideBuckets(Record):
    embedding: int
    embedding_norm: int
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
    if index.quantization is None:  # decoded quantized checkpoints arrive as their logical index
        _refuse_quantized(index, config)
    stack = _decoder_stack(counted, family)
    if not stack.layers:  # not a decoder model at all (a lone tensor, an optimizer state, ...)
        raise CheckpointError(index.files[0], f"unknown architecture ({model_type or 'unknown'}): no decoder layers "
                                              "(<...>.layers.N. or <...>.h.N. tensors) found",
                              "supported: " + ", ".join(SUPPORTED_MODEL_TYPES))

    # At this point every tensor of the stack has its role; what follows counts them.
    notes: list[str] = []
    if model_type and model_type not in SUPPORTED_MODEL_TYPES:
        notes.append(f"family {model_type!r} is not one prunescope knows: tensors it cannot place (experts, "
                     "routers, ...) are counted in each layer's `other`; totals stay exact")
    elif not any(placed[2] in ("attention", "mlp", "mla", "experts") for tensors in stack.layers.values()
                 for placed in tensors):
        notes.append(f"no attention or MLP tensor of a known family found ({model_type or 'no model_type'}): "
                     "everything is counted in `other`; totals stay exact (supported: "
                     + ", ".join(SUPPORTED_MODEL_TYPES) + ")")
    head_dim, head_dim_source = _head_dim(config, base_config, stack, family, index, notes)
    prefix = class_prefix(first_architecture(config)) or family.model_types.get(model_type) or \
        class_prefix(short_class(index.module_classes.get("")))
    names: dict[str, str] = {}
    layers, residual_widths = [], []
    windows = attention_windows(config, len(stack.layers))
    worked_out: dict[tuple, tuple[LayerStructure, int | None]] = {}  # see _repeated_layer
    for layer_idx, window in zip(sorted(stack.layers), windows):
        classes = {part: index.module_classes.get(f"{stack.prefix}.{layer_idx}{part}")
                   for part in ("", f".{family.attention}", f".{family.mlp}")}
        layer, residual_width = _repeated_layer(layer_idx, stack, family, head_dim, prefix, classes, config, names,
                                                notes, worked_out)
        layers.append(layer.replace(attention_window=window) if window else layer)
        residual_widths.append(residual_width)
    extra = [idx for idx in sorted(stack.layers) if any(placed[3] == MTP for placed in stack.layers[idx])]
    if extra:
        notes.append(f"layers {extra} are multi-token-prediction modules, not decoder layers of the config: counted "
                     "in total_params (they are in the file) though transformers does not load them")
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
    moe_layers = any(layer.mlp.num_experts for layer in layers)
    dtypes = _dtype_counts(counted)
    structure = ModelStructure(
        model_name=name,
        family=model_type or model_type_from_classes(index.module_classes) or "unknown",
        total_params=sum(dtypes.values()),
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
        dtypes=dtypes,
        other_tensors=outside.other_names,
        buffers=tuple(buffers),
        notes=tuple(notes),
        position_embedding_params=outside.positions,
        embedding_norm_params=outside.embedding_norm,
        projection_names=names,
        layer_prefix=stack.prefix,
        quantization=index.quantization,
        top_k=family.config_value(config, "top_k") if moe_layers else None,
        num_experts=tuple(layer.mlp.num_experts or 0 for layer in layers) if moe_layers else None,
        lm_head_shape=_lm_head_shape(embedding_tensor if tied else outside.lm_head_tensor),
        outside_weight_shapes=_outside_linears(stack.outside, family),
    )
    assert structure.total_params == (outside.embedding + outside.embedding_norm + outside.positions + outside.lm_head
                                      + outside.final_norm + outside.other + structure.total_layer_params), \
        "buckets must add up"
    if moe_layers:
        from .moe import active_params

        structure = structure.replace(active_params=active_params(structure, structure.top_k, notes),
                                      notes=tuple(notes))
    return _with_mismatches(structure, config, family, len(extra))


# -- 1) which tensors are parameters ----------------------------------------------------------


def _parameters(index: TensorIndex, family: Family) -> tuple[list[TensorInfo], list[str], dict[str, str]]:
    """(counted parameters, buffer names, alias name -> the tensor it shares storage with)."""
    counted: list[TensorInfo] = []
    buffers: list[str] = []
    for tensor in index.tensors:
        if tensor.is_parameter is False or (tensor.is_parameter is None and (
                tensor.name.rpartition(".")[2] in BUFFER_NAMES or (family.buffers and _is_family_buffer(family, tensor.name)))):
            buffers.append(tensor.name)
        elif tensor.alias_of is None:
            counted.append(tensor)
    aliases = {tensor.name: tensor.alias_of for tensor in index.tensors if tensor.alias_of}
    # When a tied lm_head came first in the file (sorted state dicts), count the tensor as the
    # embedding and the lm_head as its alias, which is how every model ties them.
    by_name = {tensor.name: tensor for tensor in index.tensors} if aliases else {}
    for name, target in list(aliases.items()):
        if _is_embedding_weight(family, name) and family.outside_role(target) == LM_HEAD:
            embedding = by_name[name].replace(alias_of=None)
            counted = [embedding if tensor.name == target else tensor for tensor in counted]
            aliases = {**{key: value for key, value in aliases.items() if key != name}, target: name}
    return counted, buffers, aliases


def _is_family_buffer(family: Family, name: str) -> bool:
    in_layer = LAYER_NAME.match(name)
    return family.is_buffer(in_layer["rest"] if in_layer else name)


# The last part of the names of packed low-bit weights and their codebooks (GPTQ, AWQ, bitsandbytes), and
# bitsandbytes' ".quant_state.<kind>" tensors.
QUANTIZED_TENSOR_PARTS = frozenset({"qweight", "qzeros", "g_idx", "scales", "absmax", "quant_map", "SCB", "weight_format"})


def _is_packed(name: str) -> bool:
    module, _, last = name.rpartition(".")
    return bool(module) and last in QUANTIZED_TENSOR_PARTS or ".quant_state." in name


def _first_packed(index: TensorIndex) -> str | None:
    """The first packed tensor's name, if any (the joined names searched first: most files have none)."""
    joined = index.joined_names
    if ".quant_state." in joined or any(f".{part}\0" in joined for part in QUANTIZED_TENSOR_PARTS):
        return next((tensor.name for tensor in index.tensors if _is_packed(tensor.name)), None)
    return None


def _refuse_quantized(index: TensorIndex, config: dict) -> None:
    """Packed low-bit weights have shapes that are not parameter counts: refuse, rather than report nonsense."""
    quantization = config.get("quantization_config")
    packed = _first_packed(index)
    if quantization or packed:
        method = (quantization or {}).get("quant_method") if isinstance(quantization, dict) else None
        what = method or (packed and f"tensor {packed}")
        raise CheckpointError(index.files[0], f"quantized checkpoint ({what}): packed weights' shapes are not "
                                              "parameter counts", "analyse the unquantized (or dequantized) model")


# -- 2) the decoder stack and what lies outside it --------------------------------------------


def _decoder_stack(counted: list[TensorInfo], family: Family) -> DecoderStack:
    """The decoder stack is the `...layers.N` family holding most tensors; another one (a vision
    tower's encoder layers, say) is not decoder layers and goes to `other`."""
    parsed = [match.groups() if (match := LAYER_NAME.match(tensor.name)) else None for tensor in counted]
    sizes = Counter(map(_first, filter(None, parsed)))  # tensors per stack prefix
    prefix = max(sizes, key=sizes.get) if sizes else ""
    by_index: dict[str, list[Placed]] = {}  # by the index as written: parsed once per layer, not per tensor
    outside: list[TensorInfo] = []
    places: dict[str, tuple] = {}  # every layer repeats the same names: place each once
    for tensor, groups in zip(counted, parsed):
        if groups and groups[0] == prefix:
            _, index, rest = groups
            place = places.get(rest)
            if place is None:
                place = places[rest] = family.place(rest)
            bucket, role, module = place
            tensors = by_index.get(index)
            if tensors is None:
                tensors = by_index[index] = []
            tensors.append((rest, tensor, bucket, role, module))
        else:
            outside.append(tensor)
    layers: dict[int, list[Placed]] = {}
    for index, tensors in by_index.items():
        layers.setdefault(int(index), []).extend(tensors)  # "01" and "1" are one layer
    for tensors in layers.values():  # by name: where shards split a layer does not change how it reads
        tensors.sort(key=_first)
    return DecoderStack(prefix=prefix, layers=layers, outside=tuple(outside))


_first = itemgetter(0)  # a placed tensor's name within its layer; a parsed name's stack prefix


def _outside_buckets(outside: tuple[TensorInfo, ...], family: Family) -> OutsideBuckets:
    counts = {EMBEDDING: 0, EMBEDDING_NORM: 0, POSITIONS: 0, LM_HEAD: 0, FINAL_NORM: 0, None: 0}
    other_names = []
    embedding_tensor = lm_head_tensor = None
    lm_head_seen = False
    for tensor in outside:
        role = family.outside_role(tensor.name)
        lm_head_seen = lm_head_seen or role == LM_HEAD
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
        embedding=counts[EMBEDDING], embedding_norm=counts[EMBEDDING_NORM], positions=counts[POSITIONS], lm_head=counts[LM_HEAD],
        final_norm=counts[FINAL_NORM], other=counts[None], other_names=tuple(other_names),
        embedding_tensor=embedding_tensor,
        lm_head_seen=lm_head_seen,
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


def _repeated_layer(layer_idx, stack, family, head_dim, prefix, classes, config, names, notes,
                    worked_out: dict) -> tuple[LayerStructure, int | None]:
    """_layer, worked out once for the layers that repeat an earlier one but for their number: the same
    tensor names within the layer, with the same shapes, module classes and configured head counts (most
    models stack one layer N times: Mixtral-8x7B's 32 layers of 31 tensors). A repeat takes the earlier
    layer's structure with its own number and tensor names, and names its projections as it did. A layer
    whose working out added a note (notes name the layer) is never taken as the model for others."""
    tensors = stack.layers[layer_idx]
    key = (tuple([(placed[0], placed[1].shape) for placed in tensors]), tuple(classes.values()),
           family.config_value(config, "heads", layer_idx), family.config_value(config, "kv_heads", layer_idx))
    if key not in worked_out:
        noted = len(notes)
        layer, residual_width, layer_names = _layer(layer_idx, stack, family, head_dim, prefix, classes, config, notes)
        names.update(layer_names)
        if len(notes) == noted and len(layer.tensor_roles) == len(tensors):  # (a repeated name: not a model)
            worked_out[key] = layer, residual_width, layer_names
        return layer, residual_width
    model, residual_width, layer_names = worked_out[key]
    names.update(layer_names)
    model_names = list(model.tensor_roles)  # in the order of `tensors`: the key says the names are the same
    own_names = [placed[1].name for placed in tensors]
    renamed = dict(zip(model_names, own_names))
    model_prefix, own_prefix = f"{stack.prefix}.{model.layer_idx}.", f"{stack.prefix}.{layer_idx}."
    return model.replace(
        layer_idx=layer_idx,
        tensor_roles=dict(zip(own_names, model.tensor_roles.values())),
        expert_tensors={renamed[name]: number for name, number in model.expert_tensors.items()},
        transposed=tuple(renamed[name] for name in model.transposed),
        # fused weights are named by the layer's number (see _layer)
        fused_rows={own_prefix + name[len(model_prefix):]: rows for name, rows in model.fused_rows.items()},
    ), residual_width


def _layer(layer_idx, stack, family, head_dim, prefix, classes, config, notes) -> tuple[LayerStructure, int | None, dict]:
    """The layer's structure, its residual width (rows of the attention output projection), and the
    names its file gives projections that differ from the schema's (role -> name)."""
    layer_names: dict[str, str] = {}
    tensors = stack.layers[layer_idx]
    buckets = dict.fromkeys(("attention", "mlp", "qk_norm", "mla", "attention_other", "router", "experts",
                             "shared_experts", "mlp_other", "norm", "shortcut", "other"), 0)
    projections: dict[str, int | None] = {}  # role -> parameters (weight and bias)
    weights: dict[str, tuple[int, ...]] = {}  # role -> weight shape, as [out, in]
    modules: dict[str, str] = {}  # role -> the tensor's full name without .weight/.bias
    transposed = []
    roles: dict[str, tuple[str, str | None]] = {}  # full name -> (bucket, role)
    routed, others = [], []  # the routed experts' tensors (most of an MoE layer's), and the rest
    for placed in tensors:
        rest, tensor, bucket, role, module = placed
        numel = tensor.numel
        buckets[bucket] += numel
        roles[tensor.name] = (bucket, role)
        if bucket == "experts":
            routed.append(placed)
            continue
        others.append(placed)
        if bucket in ("attention", "mlp"):
            projections[role] = projections.get(role, 0) + numel
            modules[role] = module
            if is_weight(rest):
                weights[role] = tensor.shape
                if module in family.transposed:  # stored [in, out]
                    weights[role] = tuple(reversed(tensor.shape))
                    transposed.append(tensor.name)
    for role, module in modules.items():
        if role != module.rsplit(".", 1)[-1]:
            layer_names[role] = module.rsplit(".", 1)[-1]
    rows = {role: shape[0] for role, shape in weights.items() if shape}
    residual_width = rows.get(O)
    fused_rows = {}
    fused_layout = family.fused_layout(config)
    for fused in [role for role in projections if role in fused_layout]:
        parts = _split_fused(fused, fused_layout[fused], projections, rows, head_dim, config, family, layer_idx, notes)
        for part in fused_layout[fused].parts:
            layer_names[part] = f"{modules[fused].rsplit('.', 1)[-1]} (split)"
        name = f"{stack.prefix}.{layer_idx}.{modules[fused]}.weight"
        if parts and fused in weights and name not in transposed:
            fused_rows[name] = parts
    weight_shapes = _weight_shapes(weights, rows, others, fused_layout)

    def heads(projection: str) -> int | None:
        if projection not in rows:
            return None if projection in projections else 0
        if head_dim is None:
            return None
        if rows[projection] % head_dim:
            notes.append(f"layer {layer_idx}: {projection} has {rows[projection]} rows, not a multiple of head_dim {head_dim}")
            return None
        return rows[projection] // head_dim

    mla = None
    if buckets["mla"]:  # latent attention (DeepSeek); its module loads only for such models
        from .mla import latent_attention

        mla = latent_attention(tensors, head_dim, rows.get(Q))
    q, k, v, o = (projections.get(role) or 0 for role in ATTENTION_PROJECTIONS)
    num_heads, num_kv_heads = heads(Q), heads(K)
    if mla is not None:  # no single k or v projection; kv_b_proj expands the latent into every head
        num_heads = num_kv_heads = mla.pop("num_heads")
        kv_b_shape = mla.pop("kv_b_shape")
        if kv_b_shape and "mla.kv_b_proj" not in weight_shapes:  # GGUF's k_b/v_b: kv_b_proj's (out, in)
            weight_shapes["mla.kv_b_proj"] = kv_b_shape
        q = q if Q in projections else None
        k = v = None
    attention = AttentionStructure(
        type=short_class(classes[f".{family.attention}"]) or f"{prefix}Attention",
        total=buckets["attention"] + buckets["qk_norm"] + buckets["mla"] + buckets["attention_other"],
        q_proj=q, k_proj=k, v_proj=v, o_proj=o,
        num_heads=num_heads, num_kv_heads=num_kv_heads, qk_norm=buckets["qk_norm"],
        other=buckets["attention_other"], mla=mla)
    has_gate = GATE in projections or UP not in projections
    has_mlp_module = classes[f".{family.mlp}"] is not None or any(
        rest.startswith(family.mlp + ".") for rest, *_ in tensors)
    mlp_type = short_class(classes[f".{family.mlp}"]) or (f"{prefix}MLP" if has_mlp_module
                                                          else short_class(classes[""]) or f"{prefix}DecoderLayer")
    mlp_total = sum(buckets[bucket] for bucket in ("mlp", "router", "experts", "shared_experts", "mlp_other"))
    experts = None
    if buckets["experts"]:  # Mixture-of-Experts; its module loads only for such models
        from .moe import routed_experts

        experts = routed_experts(routed, family)
    if experts is None:
        mlp = MlpStructure(
            type=mlp_type, total=mlp_total,
            gate_proj=(projections.get(GATE) or 0) if has_gate else None,
            up_proj=projections.get(UP) or 0, down_proj=projections.get(DOWN) or 0,
            intermediate_size=rows.get(GATE, rows.get(UP, 0)),
            other=buckets["mlp_other"], router=buckets["router"], shared_experts=buckets["shared_experts"])
    else:
        widths = sorted(set(experts.intermediate), key=str)
        mlp = MlpStructure(
            type=short_class(classes[f".{family.mlp}"]) or f"{prefix}SparseMoeBlock", total=mlp_total,
            gate_proj=experts.parts.get(GATE) if GATE in experts.parts else None,
            up_proj=experts.parts.get(UP, 0), down_proj=experts.parts.get(DOWN, 0), intermediate_size=None,
            other=buckets["mlp_other"], num_experts=experts.count, router=buckets["router"],
            experts=buckets["experts"], shared_experts=buckets["shared_experts"],
            expert_intermediate_size=widths[0] if len(widths) == 1 else list(experts.intermediate))
        _check_router(others, experts.count, layer_idx, notes)
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
        tensor_roles=roles,
        fused_rows=fused_rows, expert_tensors=experts.tensors if experts else {}, transposed=tuple(transposed))
    return layer, residual_width, layer_names


def _check_router(tensors, experts: int, layer_idx: int, notes: list[str]) -> None:
    """The router scores each routed expert with one row: a pruned model that kept rows of removed
    experts (or lost rows of kept ones) routes tokens to experts that are not there."""
    for rest, tensor, bucket, _, _ in tensors:
        if bucket == "router" and is_weight(rest) and tensor.shape and tensor.shape[0] != experts:
            notes.append(f"layer {layer_idx}: the router scores {tensor.shape[0]} experts, the file holds {experts}")
def _weight_shapes(weights, rows, tensors, fused_layout: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of each projection's weight by its schema name, a fused weight's parts with their own
    rows (the split has filled `rows`); SliceGPT's shortcut matrices by their own names; in MoE layers
    the router's (`router`) and each shared-expert weight's (`shared_experts.<module>`). `tensors` are
    the layer's without its routed experts, whose sizes are the MLP's `expert_intermediate_size`."""
    stored = dict(weights)
    for fused, description in fused_layout.items():
        if fused in weights:
            stored.update(dict.fromkeys(description.parts, weights[fused]))
    shapes = {role: (rows[role], stored[role][1]) for role in ATTENTION_PROJECTIONS + MLP_PROJECTIONS
              if role in stored and len(stored[role]) == 2 and rows.get(role) is not None}
    for rest, tensor, bucket, role, module in tensors:
        if len(tensor.shape) != 2:
            continue
        if bucket == "shortcut":  # SliceGPT's attn_shortcut_Q / mlp_shortcut_Q: no .weight suffix
            shapes[module] = tuple(tensor.shape)
        elif not is_weight(rest):
            continue
        elif role == ROUTER:  # (routed experts, hidden): one score per expert per token
            shapes[ROUTER] = tuple(tensor.shape)
        elif bucket == SHARED_EXPERT:  # always active: every token passes every shared weight
            shapes[f"{SHARED_EXPERT}.{module}"] = tuple(tensor.shape)
        elif bucket == "mla":  # latent attention: q_a/q_b, kv_a_proj_with_mqa, kv_b
            shapes[f"mla.{role}"] = tuple(tensor.shape)
    return shapes


def _columns(weights, roles) -> int | None:
    return next((weights[role][1] for role in roles if role in weights and len(weights[role]) == 2), None)


def _split_fused(fused, description, projections, rows, head_dim, config, family, layer_idx, notes):
    """Share a fused projection's parameters among its parts in proportion to their rows; returns the
    parts' row ranges ((role, first row, end row), ...; a part may have several, interleaved), or None
    when the rows cannot be divided."""
    count = projections.pop(fused)
    total_rows = rows.pop(fused, None)
    if description.split == HALVES:
        ranges = ((description.parts[0], 0, total_rows // 2), (description.parts[1], total_rows // 2, total_rows)) \
            if total_rows else None
    else:
        ranges = _qkv_ranges(description.split, total_rows, head_dim, config, family, layer_idx, notes)
    if not ranges or not total_rows:
        for part in description.parts:
            projections[part] = None
        return None
    part_rows = {part: 0 for part in description.parts}
    for part, start, end in ranges:
        part_rows[part] += end - start
    for part in description.parts:
        projections[part] = count * part_rows[part] // total_rows
        rows[part] = part_rows[part]
    return tuple(ranges)


def _qkv_ranges(split, total_rows, head_dim, config, family, layer_idx, notes):
    """Which rows of a fused q/k/v projection belong to q, k and v, by the family's layout:
    ((role, first row, end row), ...)."""
    if not total_rows or not head_dim or total_rows % head_dim:
        notes.append(f"layer {layer_idx}: cannot split qkv_proj ({total_rows} rows) without a head_dim")
        return None
    slots = total_rows // head_dim
    if split == PER_HEAD:  # [q_h, k_h, v_h] for each head
        if slots % 3:
            notes.append(f"layer {layer_idx}: fused qkv has {slots} heads' rows, not three per head")
            return None
        return tuple((role, (3 * head + part) * head_dim, (3 * head + part + 1) * head_dim)
                     for head in range(slots // 3) for part, role in enumerate((Q, K, V)))
    if split == MULTI_QUERY:  # [q heads | k | v]
        return _blocks(((Q, slots - 2), (K, 1), (V, 1)), head_dim) if slots > 2 else None
    heads = family.config_value(config, "heads", layer_idx)
    kv_heads = _configured_kv_heads(config, family, layer_idx)
    if split == PER_KV_GROUP:  # [q x G, k, v] for each KV group
        if heads and kv_heads and heads % kv_heads == 0 and slots % (heads // kv_heads + 2) == 0:
            group = heads // kv_heads
            return tuple(block for kv in range(slots // (group + 2))
                         for block in _blocks(((Q, group), (K, 1), (V, 1)), head_dim, kv * (group + 2) * head_dim))
        notes.append(f"layer {layer_idx}: fused qkv has {slots} heads' rows, which no KV group of the config fits")
        return None
    if heads is not None and kv_heads is not None and heads + 2 * kv_heads == slots:
        return _blocks(((Q, heads), (K, kv_heads), (V, kv_heads)), head_dim)
    if heads is not None and kv_heads and heads % kv_heads == 0:
        group = heads // kv_heads
        if slots % (group + 2) == 0:
            kv = slots // (group + 2)
            return _blocks(((Q, group * kv), (K, kv), (V, kv)), head_dim)
    if heads is None and slots % 3 == 0:  # no config: equal q, k and v (GPT-2 and every MHA model)
        return _blocks(((Q, slots // 3), (K, slots // 3), (V, slots // 3)), head_dim)
    notes.append(f"layer {layer_idx}: qkv_proj has {slots} heads' rows, which no q/kv split of the config fits")
    return None


def _blocks(parts, head_dim: int, start: int = 0) -> tuple:
    """Consecutive blocks ((role, heads), ...) as row ranges from `start`."""
    ranges = []
    for role, heads in parts:
        ranges.append((role, start, start + heads * head_dim))
        start += heads * head_dim
    return tuple(ranges)


# -- 4) head_dim ------------------------------------------------------------------------------


HEAD_ROLES = frozenset({Q, QKV, K, Q_NORM, "q_b_proj"})


def _head_dim(config, base_config, stack: DecoderStack, family: Family, index: TensorIndex, notes) -> tuple[int | None, str]:
    """The first candidate that divides every layer's q and k rows, in order of trust: what a file
    states or measures (head_dim, per-head q/k norm widths, rotary frequencies) before ratios of sizes.
    A base model's config counts only when it is of the same family and width as this one."""
    candidates: list[tuple[object, str]] = []
    parts = [config.get(key) for key in family.head_dim_sum]
    if parts and all(isinstance(part, int) and not isinstance(part, bool) for part in parts):  # DeepSeek
        candidates.append((sum(parts), CONFIG_HEAD_DIM_SUM + "+".join(family.head_dim_sum)))
    candidates.append((family.config_value(config, "head_dim"), CONFIG_HEAD_DIM))
    # The few tensors that speak for heads, per layer (in an MoE layer, most tensors are experts').
    head_tensors = [[placed for placed in tensors if placed[3] in HEAD_ROLES] for tensors in stack.layers.values()]
    q_norm = _per_head_norm(head_tensors)
    if q_norm is not None:
        candidates.append((q_norm, Q_NORM_SHAPE))
    if (config.get("partial_rotary_factor") or 1) == 1:  # partial rotary: inv_freq covers part of a head
        inv_freq = next((tensor for tensor in index.tensors if tensor.name.endswith("inv_freq") and tensor.shape), None)
        if inv_freq is not None:
            candidates.append((2 * inv_freq.shape[0], ROTARY_LENGTH))
    if base_config and _same_kind(base_config, config, family, stack):
        candidates.append((family.config_value(base_config, "head_dim"), BASE_HEAD_DIM))
        candidates.append((_ratio(base_config, family), BASE_RATIO))
    elif base_config:
        notes.append("the base model's config is not used for head_dim: it is of another family or width")
    candidates.append((_ratio(config, family), CONFIG_RATIO))
    weights = [(role, tensor.shape[::-1] if module in family.transposed else tensor.shape)
               for tensors in head_tensors for rest, tensor, _, role, module in tensors
               if role in (Q, QKV, K, "q_b_proj") and is_weight(rest) and tensor.shape]
    rows = [shape[0] for role, shape in weights if role != K] + [shape[0] for role, shape in weights if role == K]
    rejected = []
    for value, source in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if all(row % value == 0 for row in rows):
                if rejected:
                    notes.append(f"head_dim from {source}; rejected {', '.join(rejected)} (does not divide the q/k rows)")
                if source == CONFIG_RATIO and not _fits_config(head_tensors, config, family, value):
                    # hidden/heads is right for an unpruned config; with pruned, updated head counts it
                    # is not (hidden_size stays), and a stale config cannot say which.
                    notes.append(f"head_dim {value} is a guess from hidden_size/num_attention_heads, which pruning "
                                 "may have changed: give --base_model or set head_dim in config.json to be sure")
                return value, source
            rejected.append(f"{value} from {source}")
    notes.append("head_dim unknown: heads cannot be counted (give a config.json or --base_model)")
    return None, UNKNOWN


def _per_head_norm(head_tensors: list[list[Placed]]) -> int | None:
    """The width of a q norm that normalises each head on its own ([head_dim], as in Qwen3, Gemma-3 and
    StableLM). A norm as wide as its layer's q projection (OLMo-2, OLMoE) spans every head and says
    nothing about head_dim."""
    for tensors in head_tensors:
        q_rows = next((tensor.shape[0] for rest, tensor, _, role, _ in tensors
                       if role in (Q, QKV) and is_weight(rest) and tensor.shape), None)
        for rest, tensor, _, role, _ in tensors:
            if role == Q_NORM and is_weight(rest) and tensor.shape and tensor.shape[0] != q_rows:
                return tensor.shape[0]
    return None


def _same_kind(base_config: dict, config: dict, family: Family, stack: DecoderStack) -> bool:
    """Whether a base model's config may speak for this model's heads: same family, same width."""
    if config.get("model_type") and base_config.get("model_type") and \
            config["model_type"] != base_config["model_type"]:
        return False
    base_hidden, hidden = family.config_value(base_config, "hidden"), family.config_value(config, "hidden")
    if base_hidden is not None and hidden is not None:
        return base_hidden == hidden
    outside_width = next((tensor.shape[1] for tensor in stack.outside
                          if _is_embedding_weight(family, tensor.name) and len(tensor.shape) == 2), None)
    return base_hidden is None or outside_width is None or base_hidden == outside_width


def _fits_config(head_tensors: list[list[Placed]], config: dict, family: Family, head_dim: int) -> bool:
    """Whether every layer's q (or fused qkv) rows are what the config's head counts say."""
    heads = family.config_value(config, "heads")
    kv_heads = _configured_kv_heads(config, family)
    for tensors in head_tensors:
        for rest, tensor, _, role, module in tensors:
            if role not in (Q, QKV) or not is_weight(rest) or heads is None or not tensor.shape:
                continue
            out = tensor.shape[-1] if module in family.transposed else tensor.shape[0]
            if role == Q and out != heads * head_dim:
                return False
            if role == QKV and out != (heads + 2 * kv_heads) * head_dim:
                return False
    return True


def _configured_kv_heads(config: dict, family: Family, layer: int | None = None) -> int | None:
    """KV heads as the config means them: one in a multi-query layout (Falcon-7B's num_kv_heads says
    nothing), else num_key_value_heads (or its family's name), else the heads; with `layer`, that layer's
    where the config lists them per layer."""
    fused = family.fused_layout(config).get(QKV)
    if fused is not None and fused.split == MULTI_QUERY:
        return 1
    kv_heads = family.config_value(config, "kv_heads", layer)
    return kv_heads if kv_heads is not None else family.config_value(config, "heads", layer)


def _ratio(config: dict, family: Family) -> int | None:
    """hidden / heads; heads given per layer (a GGUF header) count by the first layer's, as llama.cpp takes them."""
    hidden, heads = family.config_value(config, "hidden"), family.config_value(config, "heads", 0)
    if hidden is not None and heads and hidden % heads == 0:
        return hidden // heads
    return None


# -- 5) names, dtypes and the config's word against the shapes --------------------------------


def _dtype_counts(tensors) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tensor in tensors:
        counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel
    return counts


def _with_mismatches(structure: ModelStructure, config: dict, family: Family, extra_layers: int = 0) -> ModelStructure:
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
    if configured_layers is not None and configured_layers != len(layers) - extra_layers:
        mismatches.append({"field": "num_hidden_layers", "config": configured_layers, "actual": len(layers) - extra_layers,
                           "layers": []})
    heads = family.config_value(config, "heads")
    # Layers whose attention or MLP prunescope could not place (unknown families) say nothing here.
    with_attention = [layer for layer in layers if layer.attention.total]
    with_mlp = [layer for layer in layers if layer.mlp.total]
    explained, judged = _pruned_heads_agree(config, heads, with_attention, mismatches)
    notes = list(structure.notes)
    if explained:
        notes.append(f"config pruned_heads says which heads layers {explained} lost, and the shapes agree")
    with_attention = [layer for layer in with_attention if layer.layer_idx not in judged]
    check("num_attention_heads", heads, [(layer.layer_idx, layer.attention.num_heads) for layer in with_attention])
    check("num_key_value_heads", _configured_kv_heads(config, family),
          [(layer.layer_idx, layer.attention.num_kv_heads) for layer in with_attention
           if layer.attention.mla is None])  # MLA: every head reads the shared latent
    dense = [layer for layer in with_mlp if not layer.mlp.num_experts]
    sparse = [layer for layer in with_mlp if layer.mlp.num_experts]
    check("intermediate_size", family.config_value(config, "intermediate"),
          [(layer.layer_idx, layer.mlp.intermediate_size) for layer in dense])
    if sparse:  # reported under the config's own key: num_local_experts, num_experts, n_routed_experts
        check(family.config_key(config, "experts") or "num_experts", family.config_value(config, "experts"),
              [(layer.layer_idx, layer.mlp.num_experts) for layer in sparse])
        check(family.config_key(config, "expert_intermediate") or "moe_intermediate_size",
              family.config_value(config, "expert_intermediate"),
              [(layer.layer_idx, layer.mlp.expert_intermediate_size) for layer in sparse
               if not isinstance(layer.mlp.expert_intermediate_size, list)])
    for field_name, size, actual in (("hidden_size", "hidden", structure.hidden_size),
                                     ("vocab_size", "vocab", structure.vocab_size)):
        configured = family.config_value(config, size)
        if configured is not None and actual is not None and configured != actual:
            mismatches.append({"field": field_name, "config": configured, "actual": actual, "layers": []})
    return structure.replace(config_mismatches=tuple(mismatches), notes=tuple(notes))


def _pruned_heads_agree(config: dict, heads: int | None, layers, mismatches: list) -> tuple[list[int], set[int]]:
    """(layers whose head count is what config.pruned_heads says, every layer it speaks of). Head pruning
    through transformers' prune_heads writes it (layer -> removed heads); a layer it gets wrong is a
    `pruned_heads` mismatch."""
    pruned = config.get("pruned_heads")
    if not isinstance(pruned, dict) or not pruned or heads is None:
        return [], set()
    agree, judged = [], set()
    for layer in layers:
        removed = pruned.get(str(layer.layer_idx), pruned.get(layer.layer_idx))
        if not isinstance(removed, list):
            continue
        expected = heads - len(set(removed))
        judged.add(layer.layer_idx)
        if layer.attention.num_heads == expected:
            agree.append(layer.layer_idx)
        elif layer.attention.num_heads is not None:
            mismatches.append({"field": "pruned_heads", "config": expected, "actual": layer.attention.num_heads,
                               "layers": [layer.layer_idx],
                               "per_layer": {str(layer.layer_idx): layer.attention.num_heads}})
    return agree, judged
