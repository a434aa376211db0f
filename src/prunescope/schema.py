"""The output files' names and JSON schemas: the original tool's (extended, never renamed), converted
both ways. Writers (pipeline, batch) and readers (the report command) go through here.

Nothing here knows about checkpoint file formats; see atomic.py for how files are written.
"""

from __future__ import annotations

from .quantized import Quantization
from .compute import CONVENTION, ComputeOptions, LayerCompute, ModelCompute, PassFlops
from .interpret.structure import (AttentionStructure, LayerContents, LayerStructure, MlpStructure, ModelContents,
                                  ModelStructure)

TYPE_CHECKING = False  # typing's flag without importing typing: `compare` loads only with --base_model
if TYPE_CHECKING:
    from .compare import Change, Comparison, ExpertMatching

# Per model, in <model>/analysis/ (or <output_dir>/<model>/analysis/):
STRUCTURE_FILE = "model_structure.json"
COMPARISON_FILE = "model_comparison.json"
SUMMARY_FILE = "structure_summary.txt"  # console.structure_summary
# Per batch, in <output_dir>/:
BATCH_FILE = "batch_analysis_results.json"
MODELS_SUMMARY_FILE = "models_summary.json"  # with --merge_results

# -- model_structure.json -------------------------------------------------------------------------


def structure_to_dict(structure: ModelStructure) -> dict:
    return {
        "model_name": structure.model_name,
        "total_params": structure.total_params,
        "embedding_params": structure.embedding_params,
        "lm_head_params": structure.lm_head_params,
        "layer_summary": {"num_layers": structure.num_layers, "total_layer_params": structure.total_layer_params},
        "layers": [_layer_to_dict(layer, layer_compute) for layer, layer_compute
                   in zip(structure.layers, structure.compute.layers if structure.compute else [None] * structure.num_layers)],
        "tied_embeddings": structure.tied_embeddings,
        "final_norm_params": structure.final_norm_params,
        "other_params": structure.other_params,
        "other_tensors": list(structure.other_tensors),
        "position_embedding_params": structure.position_embedding_params,
        **({"embedding_norm_params": structure.embedding_norm_params} if structure.embedding_norm_params else {}),
        **({"top_k": structure.top_k, "num_experts": list(structure.num_experts),
            "active_params": structure.active_params} if structure.num_experts is not None else {}),
        "family": structure.family,
        "hidden_size": structure.hidden_size,
        "vocab_size": structure.vocab_size,
        "head_dim": structure.head_dim,
        "head_dim_source": structure.head_dim_source,
        "dtypes": structure.dtypes,
        "buffers": list(structure.buffers),
        "config_mismatches": list(structure.config_mismatches),
        "notes": list(structure.notes),
        "projection_names": structure.projection_names,
        "slicing": structure.slicing,
        "layer_prefix": structure.layer_prefix,
        "lm_head_shape": list(structure.lm_head_shape) if structure.lm_head_shape else None,
        **({"outside_weight_shapes": {name: list(shape) for name, shape in structure.outside_weight_shapes.items()}}
           if structure.outside_weight_shapes else {}),
        **_model_contents_fields(structure.contents),
        **({"quantization": quantization_to_dict(structure.quantization)} if structure.quantization else {}),
        **({"compute": compute_to_dict(structure.compute)} if structure.compute is not None else {}),
    }


def quantization_to_dict(quantization: Quantization) -> dict:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in ((name, getattr(quantization, name)) for name in Quantization._fields)}


def quantization_from_dict(data: dict) -> Quantization:
    return Quantization(**{name: tuple(value) if name in ("unquantized_modules", "notes") else value
                           for name, value in data.items() if name in Quantization._fields})


def _model_contents_fields(contents: ModelContents | None) -> dict:
    if contents is None:
        return {}
    return {"nonzero_params": contents.nonzero_params, "sparsity": contents.sparsity,
            "nm_sparsity": contents.nm_sparsity, "tensors": list(contents.tensors)}


def _layer_to_dict(layer: LayerStructure, layer_compute: LayerCompute | None = None) -> dict:
    attention, mlp, contents = layer.attention, layer.mlp, layer.contents
    data = {
        "layer_idx": layer.layer_idx,
        "total": layer.total,
        "attention": {
            "type": attention.type, "total": attention.total,
            "q_proj": attention.q_proj, "k_proj": attention.k_proj, "v_proj": attention.v_proj,
            "o_proj": attention.o_proj, "num_heads": attention.num_heads, "num_kv_heads": attention.num_kv_heads,
            "qk_norm": attention.qk_norm, "other": attention.other,
            **({"mla": attention.mla} if attention.mla is not None else {}),
        },
        "mlp": {
            "type": mlp.type, "total": mlp.total, "gate_proj": mlp.gate_proj, "up_proj": mlp.up_proj,
            "down_proj": mlp.down_proj, "intermediate_size": mlp.intermediate_size, "other": mlp.other,
            **({key: getattr(mlp, key) for key in MOE_FIELDS} if mlp.num_experts
               else {key: getattr(mlp, key) for key in ("router", "shared_experts") if getattr(mlp, key)}),
        },
        "norm": layer.norm,
        "is_zero_layer": layer.is_zero_layer,
        "other": layer.other,
        "shortcut": layer.shortcut,
        **({"widths": layer.widths} if layer.widths else {}),
        "fingerprint": layer.fingerprint,
        **({"expert_fingerprints": list(layer.expert_fingerprints)} if layer.expert_fingerprints else {}),
        "weight_shapes": {name: list(shape) for name, shape in layer.weight_shapes.items()},
        **({"attention_window": layer.attention_window} if layer.attention_window else {}),
        **({"compute": _layer_compute_to_dict(layer_compute)} if layer_compute is not None else {}),
    }
    if contents is not None:
        data["nonzero"] = contents.nonzero
        data["sparsity"] = 1 - contents.nonzero / layer.total if layer.total else 0.0
        data["nm_sparsity"] = contents.nm_sparsity
        for part, projections, extra in (
                ("attention", ATTENTION_NAMES, {"effective_heads": contents.effective_heads,
                                                "effective_kv_heads": contents.effective_kv_heads}),
                ("mlp", MLP_NAMES, {"effective_intermediate_size": contents.effective_intermediate_size,
                                **({"expert_nonzero": list(contents.expert_nonzero),
                                    "expert_nm": list(contents.expert_nm)} if contents.expert_nonzero else {})})):
            section = data[part]
            section["nonzero"] = getattr(contents, f"{part}_nonzero")
            for projection in projections:
                if projection in contents.projection_nonzero:
                    section[f"{projection}_nonzero"] = contents.projection_nonzero[projection]
                for key, values in (("nm", contents.projection_nm), ("zero_rows", contents.projection_zero_rows),
                                    ("zero_columns", contents.projection_zero_columns)):
                    if projection in values:
                        section[f"{projection}_{key}"] = values[projection]
            section.update(extra)
    return data


MOE_FIELDS = ("num_experts", "router", "experts", "shared_experts", "expert_intermediate_size")
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")
# Keys the content scan adds inside attention/mlp; stripped when rebuilding the plain structure.
CONTENT_SUFFIXES = ("_nonzero", "_nm", "_zero_rows", "_zero_columns")
CONTENT_KEYS = ("nonzero", "effective_heads", "effective_kv_heads", "effective_intermediate_size")


def _layer_contents_from_dict(layer: dict) -> LayerContents | None:
    if "nonzero" not in layer:
        return None
    attention, mlp = layer["attention"], layer["mlp"]
    merged = {**attention, **mlp}
    names = ATTENTION_NAMES + MLP_NAMES

    def per(key):
        return {name: merged[f"{name}_{key}"] for name in names if f"{name}_{key}" in merged}

    return LayerContents(
        nonzero=layer["nonzero"], attention_nonzero=attention["nonzero"], mlp_nonzero=mlp["nonzero"],
        projection_nonzero=per("nonzero"), projection_nm=per("nm"), projection_zero_rows=per("zero_rows"),
        projection_zero_columns=per("zero_columns"), nm_sparsity=layer["nm_sparsity"],
        effective_heads=attention["effective_heads"], effective_kv_heads=attention["effective_kv_heads"],
        effective_intermediate_size=mlp["effective_intermediate_size"],
        expert_nonzero=tuple(mlp.get("expert_nonzero", ())), expert_nm=tuple(mlp.get("expert_nm", ())))


def _plain(section: dict) -> dict:
    return {key: value for key, value in section.items()
            if key not in CONTENT_KEYS and not key.endswith(CONTENT_SUFFIXES)}


def structure_from_dict(data: dict) -> ModelStructure:
    """Inverse of structure_to_dict (for analyses reused from disk)."""
    layers = []
    for layer in data["layers"]:
        attention = _plain(layer["attention"])
        mlp = _plain(layer["mlp"])
        layers.append(LayerStructure(
            layer_idx=layer["layer_idx"], total=layer["total"], attention=AttentionStructure(**attention),
            mlp=MlpStructure(**mlp), norm=layer["norm"], is_zero_layer=layer["is_zero_layer"],
            other=layer["other"], shortcut=layer["shortcut"], widths=layer.get("widths", {}),
            fingerprint=layer["fingerprint"], contents=_layer_contents_from_dict(layer),
            expert_fingerprints=tuple(layer.get("expert_fingerprints", ())),
            weight_shapes={name: tuple(shape) for name, shape in layer.get("weight_shapes", {}).items()},
            attention_window=layer.get("attention_window")))
    return ModelStructure(
        model_name=data["model_name"], family=data["family"], total_params=data["total_params"],
        embedding_params=data["embedding_params"], lm_head_params=data["lm_head_params"],
        tied_embeddings=data["tied_embeddings"], final_norm_params=data["final_norm_params"],
        other_params=data["other_params"], layers=tuple(layers), hidden_size=data["hidden_size"],
        vocab_size=data["vocab_size"], head_dim=data["head_dim"], head_dim_source=data["head_dim_source"],
        dtypes=data["dtypes"], other_tensors=tuple(data["other_tensors"]), buffers=tuple(data["buffers"]),
        config_mismatches=tuple(data["config_mismatches"]), notes=tuple(data["notes"]),
        position_embedding_params=data["position_embedding_params"], projection_names=data["projection_names"],
        slicing=data["slicing"], layer_prefix=data["layer_prefix"],
        embedding_norm_params=data.get("embedding_norm_params", 0), top_k=data.get("top_k"),
        num_experts=tuple(data["num_experts"]) if data.get("num_experts") is not None else None,
        active_params=data.get("active_params"),
        contents=ModelContents(data["nonzero_params"], data["sparsity"], data["nm_sparsity"], tuple(data["tensors"]))
        if "nonzero_params" in data else None,
        quantization=quantization_from_dict(data["quantization"]) if data.get("quantization") else None,
        lm_head_shape=tuple(data["lm_head_shape"]) if data.get("lm_head_shape") else None,
        outside_weight_shapes={name: tuple(shape) for name, shape in data.get("outside_weight_shapes", {}).items()},
        compute=compute_from_dict(data["compute"], data["layers"]) if "compute" in data else None)


# -- the `compute` objects (model level and per layer) -------------------------------------------

LAYER_SPLIT = PassFlops.FIELDS[:4]  # lm_head and other are the model's, not a layer's


def _layer_compute_to_dict(layer: LayerCompute) -> dict:
    return {"prefill_flops": sum(layer.prefill), "decode_flops": sum(layer.decode),
            "prefill": dict(zip(LAYER_SPLIT, layer.prefill)), "decode": dict(zip(LAYER_SPLIT, layer.decode)),
            "kv_cache_bytes_per_token": layer.kv_cache_bytes_per_token}


def compute_to_dict(compute: ModelCompute) -> dict:
    options = compute.options
    return {
        "convention": CONVENTION,
        "seq_len": options.seq_len, "context": options.context, "batch": options.batch,
        "last_logit": options.last_logit,
        "prefill_flops": compute.prefill_flops, "prefill_macs": compute.prefill_flops // 2,
        "decode_flops": compute.decode_flops, "decode_macs": compute.decode_flops // 2,
        "prefill": dict(zip(PassFlops.FIELDS, compute.prefill)), "decode": dict(zip(PassFlops.FIELDS, compute.decode)),
        "kv_dtype": compute.kv_dtype, "kv_dtype_option": options.kv_dtype,
        "kv_cache_bytes_per_token": compute.kv_cache_bytes_per_token, "kv_cache_bytes": compute.kv_cache_bytes,
        "weight_bytes": compute.weight_bytes, "weight_bytes_by_dtype": compute.weight_bytes_by_dtype,
        "weight_dtype": options.weight_dtype, "weight_bytes_at_dtype": compute.weight_bytes_at_dtype,
        "memory_bytes": compute.memory_bytes, "memory_budget": options.memory,
        "max_context": compute.max_context, "max_batch": compute.max_batch,
        "context_unbounded": compute.context_unbounded,
        "notes": list(compute.notes),
    }


def compute_from_dict(data: dict, layers: list[dict]) -> ModelCompute:
    """Inverse of compute_to_dict; `layers` are the structure's layer objects holding each layer's part."""
    options = ComputeOptions(seq_len=data["seq_len"], context=data["context"], batch=data["batch"],
                             kv_dtype=data["kv_dtype_option"], weight_dtype=data["weight_dtype"],
                             memory=data["memory_budget"], last_logit=data["last_logit"])
    return ModelCompute(
        options=options,
        layers=tuple(LayerCompute(layer_idx=layer["layer_idx"], prefill=PassFlops(**layer["compute"]["prefill"]),
                                  decode=PassFlops(**layer["compute"]["decode"]),
                                  kv_cache_bytes_per_token=layer["compute"]["kv_cache_bytes_per_token"],
                                  attention_window=layer.get("attention_window")) for layer in layers),
        prefill=PassFlops(**data["prefill"]), decode=PassFlops(**data["decode"]), kv_dtype=data["kv_dtype"],
        kv_cache_bytes_per_token=data["kv_cache_bytes_per_token"], kv_cache_bytes=data["kv_cache_bytes"],
        weight_bytes=data["weight_bytes"], weight_bytes_by_dtype=data["weight_bytes_by_dtype"],
        weight_bytes_at_dtype=data["weight_bytes_at_dtype"], memory_bytes=data["memory_bytes"],
        max_context=data["max_context"], max_batch=data["max_batch"], context_unbounded=data["context_unbounded"],
        notes=tuple(data["notes"]))


# -- model_comparison.json ------------------------------------------------------------------------


def _change(change: Change) -> dict:
    return {"original": change.original, "pruned": change.pruned, "reduced": change.reduced,
            "reduction_ratio": change.reduction_ratio}


def _expert_matching(matching: ExpertMatching) -> dict:
    return {"original": matching.original, "pruned": matching.pruned, "kept": list(matching.kept),
            "removed": list(matching.removed), "method": matching.method, "note": matching.note}


def comparison_to_dict(comparison: Comparison) -> dict:
    matching = comparison.layer_matching
    data = {
        "original_name": comparison.original_name,
        "pruned_name": comparison.pruned_name,
        "total_params": _change(comparison.total_params),
        "layer_params": _change(comparison.layer_params),
        "layers": [
            {
                "layer_idx": layer.layer_idx,
                "original_layer_idx": layer.original_layer_idx,
                "total": _change(layer.total),
                "attention": {name: _change(change) for name, change in layer.attention.items()},
                "mlp": {name: _change(change) for name, change in layer.mlp.items()},
                "norm": _change(layer.norm),
                "shortcut": _change(layer.shortcut),
                "is_zero_layer": layer.is_zero_layer,
                **({"experts": _expert_matching(layer.experts)} if layer.experts is not None else {}),
                **({"compute": {name: _change(change) for name, change in layer.compute.items()}}
                   if layer.compute is not None else {}),
            }
            for layer in comparison.layers
        ],
        "embedding_params": _change(comparison.embedding_params),
        "lm_head_params": _change(comparison.lm_head_params),
        "num_layers": _change(comparison.num_layers),
        "layer_matching": {"method": matching.method, "note": matching.note,
                           "removed_original_layers": list(matching.removed_original_layers)},
        "warnings": list(comparison.warnings),
    }
    if comparison.stored_bytes is not None:
        data["stored_bytes"] = _change(comparison.stored_bytes)
    if comparison.active_params is not None:
        data["active_params"] = _change(comparison.active_params)
        data["removed_experts"] = {str(idx): list(removed) for idx, removed in comparison.removed_experts.items()}
    if comparison.compute is not None:
        data["compute"] = {name: _change(change) for name, change in comparison.compute.items()}
        data["compute"]["notes"] = list(comparison.compute_notes)
        data["compute"]["convention"] = CONVENTION
    if comparison.nonzero_params is not None:
        data["nonzero_params"] = _change(comparison.nonzero_params)
        for layer, compared in zip(data["layers"], comparison.layers):
            if compared.nonzero is not None:
                layer["nonzero"] = _change(compared.nonzero["total"])
                layer["attention"]["nonzero"] = _change(compared.nonzero["attention"])
                layer["mlp"]["nonzero"] = _change(compared.nonzero["mlp"])
    return data
