"""SliceGPT: what its slicing configuration says, checked against the sliced shapes.

Part of the interpretation stage. SliceGPT writes `<model>_<sparsity>.pt` (a state dict) beside
`<model>_<sparsity>.json` (its SlicingConfig: per-layer widths keyed by the layer index as a string).
Shapes stay the truth; the configuration explains them and is checked against them.
"""

from __future__ import annotations

import os
import re

from ..families import choose_family
from ..families.base import EMBEDDING, LM_HEAD, POSITIONS, is_weight
from ..tensors import TensorIndex
from .structure import ModelStructure

# SlicingConfig field -> the per-layer width it fixes (parallel blocks leave some of them empty).
LAYER_FIELDS = {
    "attention_input_dimensions": "attention_input",
    "attention_output_dimensions": "attention_output",
    "mlp_input_dimensions": "mlp_input",
    "mlp_output_dimensions": "mlp_output",
}


def describe_slicing(structure: ModelStructure, index: TensorIndex, slicing: dict, config_path: str) -> ModelStructure:
    """Attach the slicing configuration, its disagreements with the shapes and a one-line summary."""
    mismatches = []
    for field, width in LAYER_FIELDS.items():
        configured = slicing.get(field) or {}
        for layer in structure.layers:
            expected = configured.get(str(layer.layer_idx))
            actual = layer.widths.get(width)
            if expected is not None and actual is not None and expected != actual:
                mismatches.append({"field": field, "layer": layer.layer_idx, "config": expected, "actual": actual})
    widths = _model_widths(structure, index)
    embeddings = slicing.get("embedding_dimensions") or {}
    for key, actual in (("0", widths.get("embedding")), ("1", widths.get("position_embedding"))):
        if embeddings.get(key) is not None and actual is not None and embeddings[key] != actual:
            mismatches.append({"field": f"embedding_dimensions[{key}]", "config": embeddings[key], "actual": actual})
    head = slicing.get("head_dimension")
    if head is not None and widths.get("head") is not None and head != widths["head"]:
        mismatches.append({"field": "head_dimension", "config": head, "actual": widths["head"]})
    layers_num = slicing.get("layers_num")
    if isinstance(layers_num, int) and layers_num != structure.num_layers:
        mismatches.append({"field": "layers_num", "config": layers_num, "actual": structure.num_layers})

    hidden = slicing.get("hidden_size")
    embedding_width = widths.get("embedding")
    sparsity = _sparsity_from_name(config_path)
    if sparsity is None and isinstance(hidden, int) and hidden and embedding_width:
        sparsity = 1 - embedding_width / hidden
    summary = "SliceGPT"
    if sparsity is not None:
        summary += f" {sparsity * 100:g}%"
    if isinstance(hidden, int) and embedding_width:
        summary += f": hidden {hidden} → {embedding_width}"
    description = {
        "summary": summary,
        "config_file": config_path,
        "hidden_size": hidden,
        "sparsity": sparsity,
        "embedding_dimension": embedding_width,
        "head_dimension": widths.get("head"),
        "parallel_blocks": bool(slicing.get("parallel_blocks")),
        "shortcut_params": sum(layer.shortcut for layer in structure.layers),
        "mismatches": mismatches,
    }
    notes = list(structure.notes)
    if mismatches:
        notes.append(f"the slicing configuration disagrees with the shapes in {len(mismatches)} place(s); "
                     "the shapes are used")
    # The config.json SliceGPT copies beside its output describes the unsliced model: its hidden size
    # differing from the sliced width is expected, not stale.
    config_mismatches = tuple(m for m in structure.config_mismatches if m["field"] != "hidden_size")
    return structure.replace(slicing=description, notes=tuple(notes), config_mismatches=config_mismatches)


def _model_widths(structure: ModelStructure, index: TensorIndex) -> dict:
    """Input widths of the embeddings and the LM head, which SliceGPT slices like the layers."""
    family = choose_family({"model_type": structure.family}, index.module_classes, [t.name for t in index.tensors])
    keys = {EMBEDDING: "embedding", POSITIONS: "position_embedding", LM_HEAD: "head"}
    widths = {}
    for tensor in index.tensors:
        role = family.outside_role(tensor.name)
        if len(tensor.shape) == 2 and is_weight(tensor.name) and role in keys:
            widths[keys[role]] = tensor.shape[1]
    return widths


def _sparsity_from_name(path: str) -> float | None:
    """`Llama-2-7b-hf_0.25.json` -> 0.25 (SliceGPT names its files `<model>_<sparsity>`)."""
    match = re.search(r"_(0(?:\.\d+)?|1(?:\.0+)?)$", os.path.splitext(os.path.basename(path))[0])
    return float(match.group(1)) if match else None
