"""Stage 3: interpret a TensorIndex as a decoder-only LLM: layers, projections, heads, norms.

Every number comes from tensor shapes. Configs are used only for head_dim (which shapes cannot give
on their own) and to report where they disagree with the shapes.
"""

from __future__ import annotations

import re

from .tensors import CheckpointError, TensorIndex, TensorInfo
from .records import Record

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "opt", "phi", "phi3")
CLASS_PREFIXES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
                  "gemma2": "Gemma2", "gemma3_text": "Gemma3", "opt": "OPT", "phi": "Phi", "phi3": "Phi3"}
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")

LAYER_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?layers)\.(?P<index>\d+)\.(?P<rest>.+)$")
# A layer's tensors by role. Families name the same roles differently: OPT's out_proj and Phi-2's
# dense are o_proj; fc1/fc2 are the up/down projections of an MLP without a gate; Phi-3 fuses
# q/k/v into qkv_proj and gate/up into gate_up_proj. OPT keeps fc1/fc2 directly in the layer.
ATTENTION_TENSOR = re.compile(r"^self_attn\.(?P<module>\w+)\.(?:weight|bias)$")
MLP_TENSOR = re.compile(r"^(?P<parent>mlp\.)?(?P<module>gate_proj|up_proj|down_proj|gate_up_proj|fc1|fc2)\.(?:weight|bias)$")
ATTENTION_ROLES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj",
                   "out_proj": "o_proj", "dense": "o_proj", "qkv_proj": "qkv_proj"}
MLP_ROLES = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj", "fc1": "up_proj",
             "fc2": "down_proj", "gate_up_proj": "gate_up_proj"}
QK_NORMS = ("q_norm", "k_norm", "q_layernorm", "k_layernorm")
SHORTCUTS = ("attn_shortcut_Q", "mlp_shortcut_Q")  # SliceGPT's residual rotations, real parameters
# Buffers that state dicts of older transformers versions persisted; they are not parameters.
BUFFER_NAME = re.compile(r"(?:^|\.)(?:inv_freq|masked_bias|position_ids|_float_tensor)$")


class AttentionStructure(Record):
    type: str
    total: int
    q_proj: int
    k_proj: int
    v_proj: int
    o_proj: int
    num_heads: int | None
    num_kv_heads: int | None
    qk_norm: int = 0  # q_norm/k_norm inside the attention module (Qwen3, Gemma3)
    other: int = 0


class MlpStructure(Record):
    type: str
    total: int
    gate_proj: int | None  # None for MLPs without a gate (OPT, Phi-2: fc1/fc2)
    up_proj: int
    down_proj: int
    intermediate_size: int | None
    other: int = 0


class LayerContents(Record):
    """What a layer's bytes hold (with --sparsity). Projections by their schema names."""

    nonzero: int
    attention_nonzero: int
    mlp_nonzero: int
    projection_nonzero: dict  # "q_proj" -> nonzero values (weight and bias)
    projection_nm: dict  # "q_proj" -> {"2:4": share of complying groups, "4:8": ...}
    projection_zero_rows: dict  # "q_proj" -> output rows that are all zero
    projection_zero_columns: dict  # "q_proj" -> input columns that are all zero
    nm_sparsity: str | None  # "2:4" when every linear weight of the layer complies, else "4:8", else None
    effective_heads: int | None  # heads whose q rows or o columns are not all zero
    effective_kv_heads: int | None
    effective_intermediate_size: int | None  # MLP channels not zeroed in gate, up and down alike


class ModelContents(Record):
    nonzero_params: int
    sparsity: float  # 1 - nonzero / total
    nm_sparsity: str | None
    tensors: tuple[dict, ...]  # {"name", "numel", "nonzero"} per parameter tensor


class LayerStructure(Record):
    layer_idx: int
    total: int
    attention: AttentionStructure
    mlp: MlpStructure
    norm: int
    is_zero_layer: bool | None = None  # None until the contents are measured
    other: int = 0  # parameters of the layer that are neither attention, MLP nor norms
    shortcut: int = 0  # SliceGPT's attn_shortcut_Q + mlp_shortcut_Q
    # Widths the layer reads and writes (SliceGPT slices them): attention_input, attention_output,
    # mlp_input, mlp_output; empty when the layer has no shortcut matrices.
    widths: dict = {}
    fingerprint: str | None = None  # hash of sampled contents: equal for a layer kept verbatim
    residual_width: int | None = None  # rows of the attention output projection; not part of the report
    contents: LayerContents | None = None  # with --sparsity
    # Names of the attention and MLP parameters, for the content stage; not part of the report.
    content_tensors: tuple[str, ...] = ()


class ModelStructure(Record):
    model_name: str
    family: str
    total_params: int
    embedding_params: int
    lm_head_params: int
    tied_embeddings: bool
    final_norm_params: int
    other_params: int
    layers: tuple[LayerStructure, ...]
    hidden_size: int | None
    vocab_size: int | None
    head_dim: int | None
    head_dim_source: str
    dtypes: dict[str, int]
    other_tensors: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    config_mismatches: tuple[dict, ...] = ()
    notes: tuple[str, ...] = ()
    position_embedding_params: int = 0  # learned position embeddings (OPT)
    # Schema name -> the family's own name, where they differ (e.g. o_proj -> out_proj).
    projection_names: dict = {}
    slicing: dict | None = None  # SliceGPT: the slicing configuration and how it matches the shapes
    layer_prefix: str = ""  # the decoder stack's tensor names start with "<layer_prefix>.<layer_idx>."
    contents: ModelContents | None = None  # with --sparsity

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def total_layer_params(self) -> int:
        return sum(layer.total for layer in self.layers)


def interpret(index: TensorIndex, name: str, config: dict | None = None,
              base_config: dict | None = None) -> ModelStructure:
    """Build the structure of one model from its tensors. `config` is the model's own (possibly stale)
    config; `base_config` the unpruned model's, used only as a source of head_dim."""
    config = config or {}
    model_type = str(config.get("model_type") or "")
    counted: list[TensorInfo] = []
    buffers: list[str] = []
    for tensor in index.tensors:
        if tensor.is_parameter is False or (tensor.is_parameter is None and BUFFER_NAME.search(tensor.name)):
            buffers.append(tensor.name)
        elif tensor.alias_of is None:
            counted.append(tensor)
    aliases = {tensor.name: tensor.alias_of for tensor in index.tensors if tensor.alias_of}
    counted, aliases = _embedding_first(counted, aliases, index)
    _refuse_quantized(index, config)

    # The decoder stack is the `...layers.N` family holding most tensors; another one (a vision
    # tower's encoder layers, say) is not decoder layers and goes to `other`.
    stacks: dict[str, int] = {}
    for tensor in counted:
        match = LAYER_NAME.match(tensor.name)
        if match:
            stacks[match["prefix"]] = stacks.get(match["prefix"], 0) + 1
    layer_prefix = max(stacks, key=stacks.get) if stacks else ""
    per_layer: dict[int, list[tuple[str, TensorInfo]]] = {}
    outside: list[TensorInfo] = []
    for tensor in counted:
        match = LAYER_NAME.match(tensor.name)
        if match and match["prefix"] == layer_prefix:
            per_layer.setdefault(int(match["index"]), []).append((match["rest"], tensor))
        else:
            outside.append(tensor)

    if not any(_role(rest)[0] in ("attention", "mlp") for tensors in per_layer.values() for rest, _ in tensors):
        family = model_type or "unknown"
        raise CheckpointError(
            index.files[0], f"unknown architecture ({family}): no decoder layers with attention/MLP projections found",
            "supported: " + ", ".join(SUPPORTED_FAMILIES))

    notes: list[str] = []
    if model_type and model_type not in SUPPORTED_FAMILIES:
        notes.append(f"family {model_type!r} is not one prunescope knows: tensors it cannot place (experts, "
                     "routers, ...) are counted in each layer's `other`; totals stay exact")
    head_dim, head_dim_source = _head_dim(config, base_config, per_layer, index, notes)
    prefix = _class_prefix(config, model_type) or _class_prefix_from_modules(index.module_classes)
    names: dict[str, str] = {}
    layers = []
    for layer_idx in sorted(per_layer):
        classes = {part: index.module_classes.get(f"{layer_prefix}.{layer_idx}{part}")
                   for part in ("", ".self_attn", ".mlp")}
        layers.append(_layer(layer_idx, per_layer[layer_idx], head_dim, prefix, classes, config, names, notes))
    indices = sorted(per_layer)
    if indices and indices != list(range(indices[0], indices[0] + len(indices))):
        missing = sorted(set(range(indices[0], indices[-1] + 1)) - set(indices))
        notes.append(f"layer indices are not contiguous: {missing} absent (layers kept their original numbers)")
    if any(layer.mlp.gate_proj is None for layer in layers):
        notes.append("MLP without a gate projection: gate_proj is null; " +
                     ", ".join(f"{theirs} is reported as {ours}" for ours, theirs in names.items()
                               if ours in MLP_PROJECTIONS))

    embedding = positions = lm_head = final_norm = other = 0
    embedding_tensor = None
    other_names = []
    lm_head_seen = False
    for tensor in outside:
        parts = tensor.name.split(".")
        if tensor.name.endswith("embed_tokens.weight"):
            embedding += tensor.numel
            embedding_tensor = tensor
        elif tensor.name.endswith("embed_positions.weight"):
            positions += tensor.numel
        elif "lm_head" in parts:
            lm_head += tensor.numel
            lm_head_seen = True
        elif len(parts) >= 2 and parts[-2].endswith("norm"):
            final_norm += tensor.numel
        else:
            other += tensor.numel
            other_names.append(tensor.name)

    tied = False
    head_alias = next((alias for alias_name, alias in aliases.items() if "lm_head" in alias_name.split(".")), None)
    if head_alias is not None and head_alias.endswith("embed_tokens.weight"):
        tied = True
    elif not lm_head_seen and embedding_tensor is not None:
        if config.get("tie_word_embeddings", True) is False:
            notes.append("no lm_head tensor although the config says the embeddings are not tied")
        else:
            tied = True
    elif lm_head_seen and embedding_tensor is not None and config.get("tie_word_embeddings") is True:
        notes.append("the config says tie_word_embeddings, but the file holds a separate lm_head tensor: both are "
                     "counted (loading it with transformers would tie them and count one)")
    lm_head_params = embedding_tensor.numel if tied and embedding_tensor is not None else lm_head

    structure = ModelStructure(
        model_name=name,
        family=model_type or _family_from_classes(index.module_classes) or "unknown",
        total_params=sum(tensor.numel for tensor in counted),
        embedding_params=embedding,
        lm_head_params=lm_head_params,
        tied_embeddings=tied,
        final_norm_params=final_norm,
        other_params=other,
        layers=tuple(layers),
        hidden_size=_hidden_size(layers, embedding_tensor),
        vocab_size=embedding_tensor.shape[0] if embedding_tensor is not None else None,
        head_dim=head_dim,
        head_dim_source=head_dim_source,
        dtypes=_dtype_counts(counted),
        other_tensors=tuple(other_names),
        buffers=tuple(buffers),
        notes=tuple(notes),
        position_embedding_params=positions,
        projection_names=names,
        layer_prefix=layer_prefix,
    )
    assert structure.total_params == (embedding + positions + lm_head + final_norm + other
                                      + structure.total_layer_params), "buckets must add up to the total"
    return _with_mismatches(structure, config)


def _embedding_first(counted: list[TensorInfo], aliases: dict, index: TensorIndex):
    """When a tied lm_head came first in the file (sorted state dicts), count the tensor as the
    embedding and the lm_head as its alias, which is how every model ties them."""
    by_name = {tensor.name: tensor for tensor in index.tensors}
    for name, target in list(aliases.items()):
        if name.endswith("embed_tokens.weight") and "lm_head" in target.split("."):
            embedding = by_name[name].replace(alias_of=None)
            counted = [embedding if tensor.name == target else tensor for tensor in counted]
            aliases = {**{key: value for key, value in aliases.items() if key != name}, target: name}
    return counted, aliases


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


def _hidden_size(layers, embedding_tensor) -> int | None:
    """The width of the residual stream: what the attention writes back (o_proj rows), which is the
    embedding width too, except where an embedding projection sits between them (OPT-350m)."""
    for layer in layers:
        if layer.residual_width:
            return layer.residual_width
    if embedding_tensor is not None and len(embedding_tensor.shape) == 2:
        return embedding_tensor.shape[1]
    return None


def _role(rest: str) -> tuple[str, str]:
    """(bucket, module) of a tensor named relative to its layer."""
    match = ATTENTION_TENSOR.match(rest)
    if match:
        module = match["module"]
        if module in ATTENTION_ROLES:
            return "attention", module
        return ("qk_norm" if module in QK_NORMS else "attention_other"), module
    if rest.startswith("self_attn."):
        return "attention_other", rest
    match = MLP_TENSOR.match(rest)
    if match:
        return "mlp", match["module"]
    if rest.startswith("mlp."):
        return "mlp_other", rest
    if rest in SHORTCUTS:
        return "shortcut", rest
    if rest.split(".", 1)[0].endswith("norm"):
        return "norm", rest
    return "other", rest


def _layer(layer_idx, tensors, head_dim, prefix, classes, config, names, notes) -> LayerStructure:
    params: dict[str, int] = {}  # by the family's module name
    weights: dict[str, tuple[int, ...]] = {}
    buckets = {"qk_norm": 0, "attention_other": 0, "mlp_other": 0, "norm": 0, "shortcut": 0, "other": 0}
    content = []
    shortcut_shapes = {}
    for rest, tensor in tensors:
        bucket, module = _role(rest)
        if bucket in ("attention", "mlp"):
            params[module] = params.get(module, 0) + tensor.numel
            if rest.endswith(".weight"):
                weights[module] = tensor.shape
        else:
            buckets[bucket] += tensor.numel
        if bucket in ("attention", "attention_other", "mlp", "mlp_other"):
            content.append(tensor.name)
        if bucket == "shortcut":
            shortcut_shapes[rest] = tensor.shape

    roles: dict[str, int | None] = {}
    rows: dict[str, int] = {}
    for module, count in params.items():
        role = ATTENTION_ROLES.get(module) or MLP_ROLES[module]
        if role != module:
            names[role] = module
        roles[role] = count
        if module in weights and weights[module]:
            rows[role] = weights[module][0]
    if "qkv_proj" in roles:
        _split_fused(roles, rows, "qkv_proj", _qkv_rows(rows.get("qkv_proj"), head_dim, config, layer_idx, notes), names)
    if "gate_up_proj" in roles:
        half = rows["gate_up_proj"] // 2 if "gate_up_proj" in rows else None
        _split_fused(roles, rows, "gate_up_proj", (half, half) if half else None, names)
    has_gate = "gate_proj" in roles or "up_proj" not in roles

    def heads(projection: str) -> int | None:
        if projection not in rows:
            return None if projection in roles else 0
        if head_dim is None:
            return None
        if rows[projection] % head_dim:
            notes.append(f"layer {layer_idx}: {projection} has {rows[projection]} rows, not a multiple of head_dim {head_dim}")
            return None
        return rows[projection] // head_dim

    attention_params = [roles.get(proj) or 0 for proj in ATTENTION_PROJECTIONS]
    attention_total = sum(params[m] for m in params if m in ATTENTION_ROLES) + buckets["qk_norm"] + buckets["attention_other"]
    attention = AttentionStructure(
        type=_short_class(classes[".self_attn"]) or f"{prefix}Attention",
        total=attention_total,
        q_proj=attention_params[0], k_proj=attention_params[1], v_proj=attention_params[2], o_proj=attention_params[3],
        num_heads=heads("q_proj"), num_kv_heads=heads("k_proj"), qk_norm=buckets["qk_norm"],
        other=buckets["attention_other"])
    mlp_total = sum(params[m] for m in params if m in MLP_ROLES) + buckets["mlp_other"]
    has_mlp_module = classes[".mlp"] is not None or any(rest.startswith("mlp.") for rest, _ in tensors)
    mlp = MlpStructure(
        type=_short_class(classes[".mlp"]) or (f"{prefix}MLP" if has_mlp_module
                                               else _short_class(classes[""]) or f"{prefix}DecoderLayer"),
        total=mlp_total,
        gate_proj=(roles.get("gate_proj") or 0) if has_gate else None,
        up_proj=roles.get("up_proj") or 0, down_proj=roles.get("down_proj") or 0,
        intermediate_size=rows.get("gate_proj", rows.get("up_proj", 0)),
        other=buckets["mlp_other"])
    residual_width = _first_rows(weights, ("o_proj", "out_proj", "dense"))
    widths = {}
    if shortcut_shapes:
        widths = {"attention_input": _columns(weights, ("q_proj", "qkv_proj")),
                  "attention_output": residual_width,
                  "mlp_input": _columns(weights, ("gate_proj", "up_proj", "gate_up_proj", "fc1")),
                  "mlp_output": _first_rows(weights, ("down_proj", "fc2"))}
    return LayerStructure(
        layer_idx=layer_idx, total=attention.total + mlp.total + buckets["norm"] + buckets["shortcut"] + buckets["other"],
        attention=attention, mlp=mlp, norm=buckets["norm"], other=buckets["other"], shortcut=buckets["shortcut"],
        residual_width=residual_width,
        widths=widths, content_tensors=tuple(content))


def _columns(weights, modules) -> int | None:
    return next((weights[m][1] for m in modules if m in weights and len(weights[m]) == 2), None)


def _first_rows(weights, modules) -> int | None:
    return next((weights[m][0] for m in modules if m in weights and weights[m]), None)


def _split_fused(roles, rows, fused, split_rows, names) -> None:
    """Share a fused projection's parameters among its parts in proportion to their rows."""
    count = roles.pop(fused)
    total_rows = rows.pop(fused, None)
    parts = ("q_proj", "k_proj", "v_proj") if fused == "qkv_proj" else ("gate_proj", "up_proj")
    for part in parts:
        names[part] = f"{fused} (split)"
    if not split_rows or not total_rows:
        for part in parts:
            roles[part] = None
        return
    for part, part_rows in zip(parts, split_rows):
        roles[part] = count * part_rows // total_rows
        rows[part] = part_rows


def _qkv_rows(total_rows, head_dim, config, layer_idx, notes):
    """How a fused qkv_proj's rows divide into q, k and v: (heads + 2 * kv_heads) * head_dim rows. The
    config's head counts are used when they fit the rows; else its query-per-KV group size."""
    if not total_rows or not head_dim or total_rows % head_dim:
        notes.append(f"layer {layer_idx}: cannot split qkv_proj ({total_rows} rows) without a head_dim")
        return None
    slots = total_rows // head_dim
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    if isinstance(heads, int) and isinstance(kv_heads, int) and heads + 2 * kv_heads == slots:
        return heads * head_dim, kv_heads * head_dim, kv_heads * head_dim
    if isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads and heads % kv_heads == 0:
        group = heads // kv_heads
        if slots % (group + 2) == 0:
            kv = slots // (group + 2)
            return group * kv * head_dim, kv * head_dim, kv * head_dim
    notes.append(f"layer {layer_idx}: qkv_proj has {slots} heads' rows, which no q/kv split of the config fits")
    return None


def _head_dim(config, base_config, per_layer, index: TensorIndex, notes) -> tuple[int | None, str]:
    """The first candidate that divides every layer's q and k rows, in order of trust: what a file
    states or measures (head_dim, q/k norm widths, rotary frequencies) before ratios of sizes."""
    candidates: list[tuple[object, str]] = [(config.get("head_dim"), "config head_dim")]
    for tensors in per_layer.values():
        for rest, tensor in tensors:
            if rest in ("self_attn.q_norm.weight", "self_attn.q_layernorm.weight") and tensor.shape:
                candidates.append((tensor.shape[0], "q_norm shape"))
                break
        else:
            continue
        break
    if (config.get("partial_rotary_factor") or 1) == 1:  # partial rotary: inv_freq covers part of a head
        for tensor in index.tensors:
            if tensor.name.endswith("inv_freq") and tensor.shape:
                candidates.append((2 * tensor.shape[0], "rotary inv_freq length"))
                break
    if base_config:
        candidates.append((base_config.get("head_dim"), "base config head_dim"))
        candidates.append((_ratio(base_config), "base config hidden_size/num_attention_heads"))
    candidates.append((_ratio(config), "config hidden_size/num_attention_heads"))
    q_rows = [tensor.shape[0] for tensors in per_layer.values() for rest, tensor in tensors
              if rest in ("self_attn.q_proj.weight", "self_attn.qkv_proj.weight") and tensor.shape]
    rows = q_rows + [tensor.shape[0] for tensors in per_layer.values() for rest, tensor in tensors
                     if rest == "self_attn.k_proj.weight" and tensor.shape]
    rejected = []
    for value, source in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if all(row % value == 0 for row in rows):
                if rejected:
                    notes.append(f"head_dim from {source}; rejected {', '.join(rejected)} (does not divide the q/k rows)")
                if source == "config hidden_size/num_attention_heads" and not _fits_config(per_layer, config, value):
                    # hidden/heads is right for an unpruned config; with pruned, updated head counts it
                    # is not (hidden_size stays), and a stale config cannot say which.
                    notes.append(f"head_dim {value} is a guess from hidden_size/num_attention_heads, which pruning "
                                 "may have changed: give --base_model or set head_dim in config.json to be sure")
                return value, source
            rejected.append(f"{value} from {source}")
    notes.append("head_dim unknown: heads cannot be counted (give a config.json or --base_model)")
    return None, "unknown"


def _fits_config(per_layer, config: dict, head_dim: int) -> bool:
    """Whether every layer's q (or fused qkv) rows are what the config's head counts say."""
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    for tensors in per_layer.values():
        for rest, tensor in tensors:
            if rest == "self_attn.q_proj.weight" and tensor.shape[0] != heads * head_dim:
                return False
            if rest == "self_attn.qkv_proj.weight" and tensor.shape[0] != (heads + 2 * kv_heads) * head_dim:
                return False
    return True


def _ratio(config: dict) -> int | None:
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None


def _class_prefix(config: dict, model_type: str) -> str:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        for suffix in ("ForCausalLM", "ForConditionalGeneration", "Model"):
            if architectures[0].endswith(suffix):
                return architectures[0][: -len(suffix)]
    return CLASS_PREFIXES.get(model_type, "")


def _class_prefix_from_modules(module_classes: dict[str, str]) -> str:
    return _class_prefix({"architectures": [_short_class(module_classes.get("")) or ""]}, "")


def _short_class(qualified: str | None) -> str | None:
    return qualified.rsplit(".", 1)[-1] if qualified else None


def _family_from_classes(module_classes: dict[str, str]) -> str | None:
    root = module_classes.get("", "")
    match = re.search(r"\.models\.(\w+)\.modeling_", root)
    return match.group(1) if match else None


def _dtype_counts(tensors) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tensor in tensors:
        counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel
    return counts


def _with_mismatches(structure: ModelStructure, config: dict) -> ModelStructure:
    """Where the config's numbers disagree with the shapes, say so (pruning tools leave configs stale)."""
    if not config:
        return structure
    layers = structure.layers
    mismatches = []

    def check(field_name, configured, actual_by_layer):
        if not isinstance(configured, int) or isinstance(configured, bool):
            return
        differing = {layer_idx: value for layer_idx, value in actual_by_layer if value is not None and value != configured}
        if differing:
            values = sorted(set(differing.values()))
            mismatches.append({"field": field_name, "config": configured,
                               "actual": values[0] if len(values) == 1 else values, "layers": sorted(differing),
                               "per_layer": {str(idx): value for idx, value in sorted(differing.items())}})

    if isinstance(config.get("num_hidden_layers"), int) and config["num_hidden_layers"] != len(layers):
        mismatches.append({"field": "num_hidden_layers", "config": config["num_hidden_layers"],
                           "actual": len(layers), "layers": []})
    heads = config.get("num_attention_heads")
    # Layers whose attention or MLP prunescope could not place (unknown families) say nothing here.
    with_attention = [layer for layer in layers if layer.attention.total]
    with_mlp = [layer for layer in layers if layer.mlp.total]
    check("num_attention_heads", heads, [(layer.layer_idx, layer.attention.num_heads) for layer in with_attention])
    check("num_key_value_heads", config.get("num_key_value_heads") or heads,
          [(layer.layer_idx, layer.attention.num_kv_heads) for layer in with_attention])
    check("intermediate_size", config.get("intermediate_size") or config.get("ffn_dim"),
          [(layer.layer_idx, layer.mlp.intermediate_size) for layer in with_mlp])
    for field_name, actual in (("hidden_size", structure.hidden_size), ("vocab_size", structure.vocab_size)):
        configured = config.get(field_name)
        if isinstance(configured, int) and actual is not None and configured != actual:
            mismatches.append({"field": field_name, "config": configured, "actual": actual, "layers": []})
    return structure.replace(config_mismatches=tuple(mismatches)) if mismatches else structure
