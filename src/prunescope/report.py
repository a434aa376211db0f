"""Stage 6: reports. JSON in the original tool's schemas (extended, never renamed), text for people.

Nothing here knows about file formats; files are written whole or not at all.
"""

from __future__ import annotations

import json
import os

from .compare import Change, Comparison
from .structure import (AttentionStructure, LayerContents, LayerStructure, MlpStructure, ModelContents,
                        ModelStructure)

# -- writing ------------------------------------------------------------------------------------


def write_atomic(path: str, content: str | bytes) -> None:
    """Write text or bytes via a temporary file in the same folder and rename, so no reader sees half
    a file. (Named by hand rather than with `tempfile`, whose import alone costs more than an analysis.)"""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{os.path.basename(path)}")
    try:
        if isinstance(content, bytes):
            with open(temporary, "xb") as stream:
                stream.write(content)
        else:
            # backslashreplace: a folder name that is not valid UTF-8 must not abort the batch.
            with open(temporary, "x", encoding="utf-8", errors="backslashreplace") as stream:
                stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def write_json(path: str, data) -> None:
    write_atomic(path, dumps_readable(data))


def dumps_readable(data) -> str:
    """JSON with one top-level field per line and one list item (e.g. one layer) per line: easy to read
    and to diff, and written by json's C encoder (indent= switches to its pure-Python one, which costs
    more than the whole analysis of an 8B model's headers)."""
    if not isinstance(data, dict):
        return json.dumps(data, ensure_ascii=False) + "\n"
    lines = []
    for key, value in data.items():
        name = json.dumps(key, ensure_ascii=False)
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            items = ",\n".join("    " + json.dumps(item, ensure_ascii=False) for item in value)
            lines.append(f"  {name}: [\n{items}\n  ]")
        else:
            lines.append(f"  {name}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


# -- model_structure.json -------------------------------------------------------------------------


def structure_to_dict(structure: ModelStructure) -> dict:
    return {
        "model_name": structure.model_name,
        "total_params": structure.total_params,
        "embedding_params": structure.embedding_params,
        "lm_head_params": structure.lm_head_params,
        "layer_summary": {"num_layers": structure.num_layers, "total_layer_params": structure.total_layer_params},
        "layers": [_layer_to_dict(layer) for layer in structure.layers],
        "tied_embeddings": structure.tied_embeddings,
        "final_norm_params": structure.final_norm_params,
        "other_params": structure.other_params,
        "other_tensors": list(structure.other_tensors),
        "position_embedding_params": structure.position_embedding_params,
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
        **_model_contents_fields(structure.contents),
    }


def _model_contents_fields(contents: ModelContents | None) -> dict:
    if contents is None:
        return {}
    return {"nonzero_params": contents.nonzero_params, "sparsity": contents.sparsity,
            "nm_sparsity": contents.nm_sparsity, "tensors": list(contents.tensors)}


def _layer_to_dict(layer: LayerStructure) -> dict:
    attention, mlp, contents = layer.attention, layer.mlp, layer.contents
    data = {
        "layer_idx": layer.layer_idx,
        "total": layer.total,
        "attention": {
            "type": attention.type, "total": attention.total,
            "q_proj": attention.q_proj, "k_proj": attention.k_proj, "v_proj": attention.v_proj,
            "o_proj": attention.o_proj, "num_heads": attention.num_heads, "num_kv_heads": attention.num_kv_heads,
            "qk_norm": attention.qk_norm, "other": attention.other,
        },
        "mlp": {
            "type": mlp.type, "total": mlp.total, "gate_proj": mlp.gate_proj, "up_proj": mlp.up_proj,
            "down_proj": mlp.down_proj, "intermediate_size": mlp.intermediate_size, "other": mlp.other,
        },
        "norm": layer.norm,
        "is_zero_layer": layer.is_zero_layer,
        "other": layer.other,
        "shortcut": layer.shortcut,
        **({"widths": layer.widths} if layer.widths else {}),
        "fingerprint": layer.fingerprint,
    }
    if contents is not None:
        data["nonzero"] = contents.nonzero
        data["sparsity"] = 1 - contents.nonzero / layer.total if layer.total else 0.0
        data["nm_sparsity"] = contents.nm_sparsity
        for part, projections, extra in (
                ("attention", ATTENTION_NAMES, {"effective_heads": contents.effective_heads,
                                                "effective_kv_heads": contents.effective_kv_heads}),
                ("mlp", MLP_NAMES, {"effective_intermediate_size": contents.effective_intermediate_size})):
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
        effective_intermediate_size=mlp["effective_intermediate_size"])


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
            fingerprint=layer["fingerprint"], contents=_layer_contents_from_dict(layer)))
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
        contents=ModelContents(data["nonzero_params"], data["sparsity"], data["nm_sparsity"], tuple(data["tensors"]))
        if "nonzero_params" in data else None)


# -- model_comparison.json ------------------------------------------------------------------------


def _change(change: Change) -> dict:
    return {"original": change.original, "pruned": change.pruned, "reduced": change.reduced,
            "reduction_ratio": change.reduction_ratio}


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
    if comparison.nonzero_params is not None:
        data["nonzero_params"] = _change(comparison.nonzero_params)
        for layer, compared in zip(data["layers"], comparison.layers):
            if compared.nonzero is not None:
                layer["nonzero"] = _change(compared.nonzero["total"])
                layer["attention"]["nonzero"] = _change(compared.nonzero["attention"])
                layer["mlp"]["nonzero"] = _change(compared.nonzero["mlp"])
    return data


# -- text ---------------------------------------------------------------------------------------


def human(count: int | None) -> str:
    """1234567 -> '1.23M': for people; the JSON keeps exact integers."""
    if count is None:
        return "-"
    for scale, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{suffix}"
    return str(count)


def reduction(ratio: float | None) -> str:
    """A reduction ratio as a signed change in size: 0.224 -> '-22.4%', a larger model -> '+3.0%'."""
    if ratio is None:
        return "-"
    if abs(ratio) < 0.0005:
        return "0.0%"
    return f"{-ratio * 100:+.1f}%"


def value_range(values) -> str:
    known = [value for value in values if value is not None]
    if not known:
        return "-"
    low, high = min(known), max(known)
    return str(low) if low == high else f"{low}-{high}"


def layer_table(structure: ModelStructure, comparison: Comparison | None = None) -> str:
    """One row per layer. With a comparison, which base layer each was paired with; with a content scan,
    nonzeros, sparsity, and heads / MLP channels left once those zeroed in place are discounted."""
    sliced = any(layer.shortcut for layer in structure.layers)
    scanned = any(layer.contents is not None for layer in structure.layers)
    base_of = {layer.layer_idx: layer.original_layer_idx for layer in comparison.layers} if comparison else {}
    header = (("layer",) + (("base",) if comparison else ())
              + ("total", "attn", "q", "k", "v", "o", "heads", "kv", "mlp", "gate", "up", "down", "inter", "norm")
              + (("shortcut",) if sliced else ()) + (("nonzero", "sparsity") if scanned else ()) + ("zero",))
    rows = [header]
    for layer in structure.layers:
        attention, mlp, contents = layer.attention, layer.mlp, layer.contents
        heads, kv_heads, inter = _text(attention.num_heads), _text(attention.num_kv_heads), _text(mlp.intermediate_size)
        if contents is not None:  # "3/4": heads whose weights are all zero are not counted as left
            heads = _effective(contents.effective_heads, attention.num_heads)
            kv_heads = _effective(contents.effective_kv_heads, attention.num_kv_heads)
            inter = _effective(contents.effective_intermediate_size, mlp.intermediate_size)
        rows.append(
            (str(layer.layer_idx),) + ((_text(base_of.get(layer.layer_idx)),) if comparison else ())
            + (human(layer.total), human(attention.total), human(attention.q_proj), human(attention.k_proj),
               human(attention.v_proj), human(attention.o_proj), heads, kv_heads, human(mlp.total),
               human(mlp.gate_proj), human(mlp.up_proj), human(mlp.down_proj), inter, human(layer.norm))
            + ((human(layer.shortcut),) if sliced else ())
            + ((human(contents.nonzero), f"{(1 - contents.nonzero / layer.total) * 100 if layer.total else 0:.1f}%")
               if scanned and contents is not None else ("-", "-") if scanned else ())
            + ({True: "yes", False: "", None: "?"}[layer.is_zero_layer],))
    return format_table(rows)


def _effective(left: int | None, total: int | None) -> str:
    if left is None or total is None or left == total:
        return _text(total)
    return f"{left}/{total}"


def _text(value) -> str:
    return "-" if value is None else str(value)


def format_table(rows, left=(0,)) -> str:
    """Plain aligned columns: numbers to the right, the columns in `left` (text) to the left."""
    widths = [max(len(str(row[column])) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(str(cell).ljust(width) if column in left else str(cell).rjust(width)
                               for column, (cell, width) in enumerate(zip(row, widths))).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def structure_summary(structure: ModelStructure, comparison: Comparison | None, kind: str,
                      findings: list[str], checkpoint_path: str) -> str:
    """structure_summary.txt: what a person wants to know about one model, in one screen."""
    layers = structure.layers
    lines = [
        f"Model: {structure.model_name}",
        f"Checkpoint: {checkpoint_path} ({kind})",
    ]
    if structure.slicing:
        lines.append(f"Slicing: {structure.slicing['summary']} "
                     f"(shortcut matrices: {structure.slicing['shortcut_params']:,} parameters)")
    lines += [
        f"Family: {structure.family}    head_dim: {_text(structure.head_dim)} ({structure.head_dim_source})",
        "",
        f"Total parameters:     {structure.total_params:,} ({human(structure.total_params)})",
        f"Embedding parameters: {structure.embedding_params:,}",
        f"LM head parameters:   {structure.lm_head_params:,}"
        + (" (tied to the embedding, counted once)" if structure.tied_embeddings else ""),
        f"Layers:               {structure.num_layers} ({structure.total_layer_params:,} parameters)",
        f"Heads per layer:      {value_range(layer.attention.num_heads for layer in layers)}"
        f"    KV heads: {value_range(layer.attention.num_kv_heads for layer in layers)}",
        f"Intermediate size:    {value_range(layer.mlp.intermediate_size for layer in layers)}",
    ]
    if structure.contents is not None:
        contents = structure.contents
        lines.append(f"Nonzero parameters:   {contents.nonzero_params:,} (sparsity {contents.sparsity * 100:.2f}%"
                     + (f", {contents.nm_sparsity} everywhere)" if contents.nm_sparsity else ")"))
        effective = [(layer.layer_idx, layer.contents) for layer in layers if layer.contents is not None]
        zeroed_heads = [f"{idx}: {c.effective_heads}/{layer.attention.num_heads}" for (idx, c), layer
                        in zip(effective, layers) if c.effective_heads is not None
                        and layer.attention.num_heads is not None and c.effective_heads < layer.attention.num_heads]
        if zeroed_heads:
            lines.append(f"Heads zeroed in place (layer: effective/heads): {', '.join(zeroed_heads)}")
        zeroed_channels = [f"{idx}: {c.effective_intermediate_size}/{layer.mlp.intermediate_size}"
                           for (idx, c), layer in zip(effective, layers)
                           if c.effective_intermediate_size is not None and layer.mlp.intermediate_size
                           and c.effective_intermediate_size < layer.mlp.intermediate_size]
        if zeroed_channels:
            lines.append(f"MLP channels zeroed in place (layer: effective/intermediate): {', '.join(zeroed_channels)}")
    zero = [layer.layer_idx for layer in layers if layer.is_zero_layer]
    if zero:
        lines.append(f"All-zero layers:      {zero}")
    if structure.position_embedding_params:
        lines.append(f"Position embeddings:  {structure.position_embedding_params:,}")
    if structure.other_params:
        lines.append(f"Other parameters:     {structure.other_params:,} ({', '.join(structure.other_tensors)})")
    if comparison is not None:
        total, layer_total = comparison.total_params, comparison.layer_params
        lines += [
            "",
            f"Compared with {comparison.original_name}:",
            f"  total:  {total.original:,} -> {total.pruned:,}  ({reduction(total.reduction_ratio)})",
            f"  layers: {layer_total.original:,} -> {layer_total.pruned:,}  ({reduction(layer_total.reduction_ratio)})",
            f"  layer count: {comparison.num_layers.original} -> {comparison.num_layers.pruned}"
            f"  (matched by {comparison.layer_matching.method}: {comparison.layer_matching.note})",
        ]
        if comparison.nonzero_params is not None:
            nonzero = comparison.nonzero_params
            lines.append(f"  nonzero: {nonzero.original:,} -> {nonzero.pruned:,}  ({reduction(nonzero.reduction_ratio)})")
        if comparison.layer_matching.removed_original_layers:
            lines.append(f"  base layers without a match: {list(comparison.layer_matching.removed_original_layers)}")
        for warning in comparison.warnings:
            lines.append(f"  ⚠ is this the right base? {warning}")
    if structure.config_mismatches:
        lines += ["", "The config disagrees with the tensor shapes (the shapes are used):"]
        for mismatch in structure.config_mismatches:
            per_layer = mismatch.get("per_layer")
            if per_layer:
                shapes = ", ".join(f"layer {idx}: {value}" for idx, value in per_layer.items())
            else:
                shapes = str(mismatch["actual"])
            lines.append(f"  {mismatch['field']}: config {mismatch['config']}; shapes: {shapes}")
    if structure.slicing and structure.slicing["mismatches"]:
        lines += ["", "The slicing configuration disagrees with the shapes (the shapes are used):"]
        lines += [f"  {m}" for m in structure.slicing["mismatches"]]
    if structure.notes:
        lines += ["", "Notes:"] + [f"  {note}" for note in structure.notes]
    if findings:
        lines += ["", "SECURITY: the pickle references code no checkpoint needs (nothing was run):"]
        lines += [f"  {finding}" for finding in findings]
    lines += ["", layer_table(structure, comparison), ""]
    return "\n".join(lines)
