"""Stage 3: interpret a TensorIndex as a decoder-only LLM: layers, projections, heads, norms.

Every number comes from tensor shapes. Configs are used only for head_dim (which shapes cannot give
on their own) and to report where they disagree with the shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .tensors import CheckpointError, TensorIndex, TensorInfo

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
CLASS_PREFIXES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
                  "gemma2": "Gemma2", "gemma3_text": "Gemma3"}
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")

LAYER_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?layers)\.(?P<index>\d+)\.(?P<rest>.+)$")
PROJECTION_NAME = re.compile(r"^(?P<module>self_attn|mlp)\.(?P<proj>\w+_proj)\.(?:weight|bias)$")
# Buffers that state dicts of older transformers versions persisted; they are not parameters.
BUFFER_NAME = re.compile(r"(?:^|\.)(?:inv_freq|masked_bias|position_ids|_float_tensor)$")


@dataclass(frozen=True)
class AttentionStructure:
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


@dataclass(frozen=True)
class MlpStructure:
    type: str
    total: int
    gate_proj: int
    up_proj: int
    down_proj: int
    intermediate_size: int | None
    other: int = 0


@dataclass(frozen=True)
class LayerStructure:
    layer_idx: int
    total: int
    attention: AttentionStructure
    mlp: MlpStructure
    norm: int
    is_zero_layer: bool | None = None  # None until the contents are measured
    other: int = 0  # parameters of the layer that are neither attention, MLP nor norms
    # Names of the attention and MLP parameters, for the content stage; not part of the report.
    content_tensors: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class ModelStructure:
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

    per_layer: dict[int, list[tuple[str, TensorInfo]]] = {}
    outside: list[TensorInfo] = []
    layer_prefix = ""
    for tensor in counted:
        match = LAYER_NAME.match(tensor.name)
        if match:
            layer_prefix = match["prefix"]
            per_layer.setdefault(int(match["index"]), []).append((match["rest"], tensor))
        else:
            outside.append(tensor)

    if not any(PROJECTION_NAME.match(rest) for tensors in per_layer.values() for rest, _ in tensors):
        family = model_type or "unknown"
        raise CheckpointError(
            index.files[0], f"unknown architecture ({family}): no decoder layers with self_attn/mlp projections found",
            "supported: " + ", ".join(SUPPORTED_FAMILIES))

    notes: list[str] = []
    head_dim, head_dim_source = _head_dim(config, base_config, per_layer, index, notes)
    prefix = _class_prefix(config, model_type)

    layers = []
    for layer_idx in sorted(per_layer):
        layers.append(_layer(layer_idx, per_layer[layer_idx], head_dim, prefix,
                             index.module_classes.get(f"{layer_prefix}.{layer_idx}.self_attn"),
                             index.module_classes.get(f"{layer_prefix}.{layer_idx}.mlp"), notes))
    indices = sorted(per_layer)
    if indices and indices != list(range(indices[0], indices[0] + len(indices))):
        missing = sorted(set(range(indices[0], indices[-1] + 1)) - set(indices))
        notes.append(f"layer indices are not contiguous: {missing} absent (layers kept their original numbers)")

    embedding = lm_head = final_norm = other = 0
    embedding_tensor = None
    other_names = []
    lm_head_seen = False
    for tensor in outside:
        short = tensor.name.rsplit(".", 2)
        if tensor.name.endswith("embed_tokens.weight"):
            embedding += tensor.numel
            embedding_tensor = tensor
        elif tensor.name.startswith("lm_head.") or ".lm_head." in tensor.name:
            lm_head += tensor.numel
            lm_head_seen = True
        elif len(short) >= 2 and short[-2].endswith("norm"):
            final_norm += tensor.numel
        else:
            other += tensor.numel
            other_names.append(tensor.name)

    tied = False
    head_alias = next((alias for alias_name, alias in aliases.items() if "lm_head" in alias_name), None)
    if head_alias is not None and head_alias.endswith("embed_tokens.weight"):
        tied = True
    elif not lm_head_seen and embedding_tensor is not None:
        if config.get("tie_word_embeddings", True) is False:
            notes.append("no lm_head tensor although the config says the embeddings are not tied")
        else:
            tied = True
    lm_head_params = embedding_tensor.numel if tied and embedding_tensor is not None else lm_head

    total = sum(tensor.numel for tensor in counted)
    structure = ModelStructure(
        model_name=name,
        family=model_type or _family_from_classes(index.module_classes) or "llama-like",
        total_params=total,
        embedding_params=embedding,
        lm_head_params=lm_head_params,
        tied_embeddings=tied,
        final_norm_params=final_norm,
        other_params=other,
        layers=tuple(layers),
        hidden_size=embedding_tensor.shape[1] if embedding_tensor is not None and len(embedding_tensor.shape) == 2 else None,
        vocab_size=embedding_tensor.shape[0] if embedding_tensor is not None else None,
        head_dim=head_dim,
        head_dim_source=head_dim_source,
        dtypes=_dtype_counts(counted),
        other_tensors=tuple(other_names),
        buffers=tuple(buffers),
        notes=tuple(notes),
    )
    assert structure.total_params == (structure.embedding_params + lm_head + final_norm + other
                                      + structure.total_layer_params), "buckets must add up to the total"
    return _with_mismatches(structure, config)


def _layer(layer_idx, tensors, head_dim, prefix, attention_class, mlp_class, notes) -> LayerStructure:
    projections: dict[str, int] = {}
    rows: dict[str, int] = {}
    attention_other = mlp_other = qk_norm = norm = other = 0
    content = []
    for rest, tensor in tensors:
        match = PROJECTION_NAME.match(rest)
        module = rest.split(".", 1)[0]
        if match and match["proj"] in ATTENTION_PROJECTIONS + MLP_PROJECTIONS:
            projections[match["proj"]] = projections.get(match["proj"], 0) + tensor.numel
            if rest.endswith(".weight") and tensor.shape:
                rows[match["proj"]] = tensor.shape[0]
            content.append(tensor.name)
        elif module == "self_attn":
            if rest.split(".")[1] in ("q_norm", "k_norm"):
                qk_norm += tensor.numel
            else:
                attention_other += tensor.numel
                content.append(tensor.name)
        elif module == "mlp":
            mlp_other += tensor.numel
            content.append(tensor.name)
        elif module.endswith("norm"):
            norm += tensor.numel
        else:
            other += tensor.numel

    def heads(projection: str) -> int | None:
        if projection not in rows:
            return 0
        if head_dim is None:
            return None
        if rows[projection] % head_dim:
            notes.append(f"layer {layer_idx}: {projection} has {rows[projection]} rows, not a multiple of head_dim {head_dim}")
            return None
        return rows[projection] // head_dim

    attention_params = [projections.get(proj, 0) for proj in ATTENTION_PROJECTIONS]
    attention = AttentionStructure(
        type=_short_class(attention_class) or f"{prefix}Attention",
        total=sum(attention_params) + qk_norm + attention_other,
        q_proj=attention_params[0], k_proj=attention_params[1], v_proj=attention_params[2], o_proj=attention_params[3],
        num_heads=heads("q_proj"), num_kv_heads=heads("k_proj"), qk_norm=qk_norm, other=attention_other)
    mlp_params = [projections.get(proj, 0) for proj in MLP_PROJECTIONS]
    intermediate = rows.get("gate_proj", rows.get("up_proj", 0))
    mlp = MlpStructure(
        type=_short_class(mlp_class) or f"{prefix}MLP", total=sum(mlp_params) + mlp_other,
        gate_proj=mlp_params[0], up_proj=mlp_params[1], down_proj=mlp_params[2],
        intermediate_size=intermediate, other=mlp_other)
    return LayerStructure(layer_idx=layer_idx, total=attention.total + mlp.total + norm + other, attention=attention,
                          mlp=mlp, norm=norm, other=other, content_tensors=tuple(content))


def _head_dim(config, base_config, per_layer, index: TensorIndex, notes) -> tuple[int | None, str]:
    """The first candidate that divides every layer's q and k rows, in order of trust."""
    candidates: list[tuple[object, str]] = [(config.get("head_dim"), "config head_dim")]
    for tensors in per_layer.values():
        for rest, tensor in tensors:
            if rest == "self_attn.q_norm.weight" and tensor.shape:
                candidates.append((tensor.shape[0], "q_norm shape"))
                break
        else:
            continue
        break
    if base_config:
        candidates.append((base_config.get("head_dim"), "base config head_dim"))
        candidates.append((_ratio(base_config), "base config hidden_size/num_attention_heads"))
    candidates.append((_ratio(config), "config hidden_size/num_attention_heads"))
    for tensor in index.tensors:
        if tensor.name.endswith("inv_freq") and tensor.shape:
            candidates.append((2 * tensor.shape[0], "rotary inv_freq length"))
            break
    rows = [tensor.shape[0] for tensors in per_layer.values() for rest, tensor in tensors
            if rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight") and tensor.shape]
    rejected = []
    for value, source in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if all(row % value == 0 for row in rows):
                if rejected:
                    notes.append(f"head_dim from {source}; rejected {', '.join(rejected)} (does not divide the q/k rows)")
                return value, source
            rejected.append(f"{value} from {source}")
    notes.append("head_dim unknown: heads cannot be counted (give a config.json or --base_model)")
    return None, "unknown"


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
    from dataclasses import replace

    layers = structure.layers
    mismatches = []

    def check(field_name, configured, actual_by_layer):
        if not isinstance(configured, int) or isinstance(configured, bool):
            return
        differing = [layer_idx for layer_idx, value in actual_by_layer if value is not None and value != configured]
        if differing:
            values = sorted({value for _, value in actual_by_layer if value is not None})
            mismatches.append({"field": field_name, "config": configured,
                               "actual": values[0] if len(values) == 1 else values, "layers": differing})

    if isinstance(config.get("num_hidden_layers"), int) and config["num_hidden_layers"] != len(layers):
        mismatches.append({"field": "num_hidden_layers", "config": config["num_hidden_layers"],
                           "actual": len(layers), "layers": []})
    heads = config.get("num_attention_heads")
    check("num_attention_heads", heads, [(layer.layer_idx, layer.attention.num_heads) for layer in layers])
    check("num_key_value_heads", config.get("num_key_value_heads", heads),
          [(layer.layer_idx, layer.attention.num_kv_heads) for layer in layers])
    check("intermediate_size", config.get("intermediate_size"),
          [(layer.layer_idx, layer.mlp.intermediate_size) for layer in layers])
    for field_name, actual in (("hidden_size", structure.hidden_size), ("vocab_size", structure.vocab_size)):
        configured = config.get(field_name)
        if isinstance(configured, int) and actual is not None and configured != actual:
            mismatches.append({"field": field_name, "config": configured, "actual": actual, "layers": []})
    return replace(structure, config_mismatches=tuple(mismatches)) if mismatches else structure
