"""The model an export starts from: its structure (stages 1-4), its tensor index, its config, and its
tensors' values read through the readers' byte ranges (a pickle is never run)."""

from __future__ import annotations

import os

import numpy as np

from ..families import choose_family
from ..families.base import DOWN, EMBEDDING, FINAL_NORM, GATE, K, K_NORM, LM_HEAD, NORM, O, Q, Q_NORM, UP, V, Family
from ..interpret.structure import LayerStructure, ModelStructure
from ..pipeline import analyse_path
from ..readers import read_tensor_index
from ..records import Record
from ..tensors import CheckpointError, TensorIndex, TensorInfo

# Element types an export can read, as numpy dtypes (bf16 has none: its bits are widened to f32).
NUMPY_TYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


class Projection(Record):
    weight: TensorInfo
    bias: TensorInfo | None = None


class SourceLayer(Record):
    """One decoder layer's tensors by role (q_proj, ..., down_proj), and its norms by module name."""

    structure: LayerStructure
    projections: dict  # role -> Projection
    norms: dict  # module name relative to the layer ("input_layernorm") -> TensorInfo
    others: tuple[str, ...]  # tensors the export does not know how to carry (full names)


class ExportSource(Record):
    path: str
    structure: ModelStructure
    config: dict
    family: Family
    index: TensorIndex
    layers: tuple[SourceLayer, ...]
    outside: dict  # role (embedding, lm_head, final_norm) -> TensorInfo
    checkpoint_kind: str
    folder: str  # where the model's own files (config, tokenizer) lie
    base: ModelStructure | None = None
    base_config: dict | None = None
    removed_base_layers: tuple[int, ...] | None = None  # None: unknown (no base given)
    base_folder: str | None = None


def load_source(path: str, base_model: str | None = None) -> ExportSource:
    """Stages 1-4 for the model (and its base, to know which layers were removed), plus its tensor index."""
    base_analysis = analyse_path(base_model) if base_model else None
    analysis = analyse_path(path, base_analysis.config if base_analysis else None)
    index = read_tensor_index(analysis.checkpoint.weight_files)
    config = dict(analysis.config or {})
    family = choose_family(config, index.module_classes, [tensor.name for tensor in index.tensors])
    by_name = {tensor.name: tensor for tensor in index.tensors}
    layers = tuple(_source_layer(layer, analysis.structure.layer_prefix, by_name) for layer in analysis.structure.layers)
    outside = {}
    for tensor in index.tensors:
        role = family.outside_role(tensor.name)
        if role in (EMBEDDING, LM_HEAD, FINAL_NORM) and tensor.name.endswith(".weight") and tensor.alias_of is None \
                and not tensor.name.startswith(analysis.structure.layer_prefix + "."):
            outside.setdefault(role, tensor)
    removed = None
    if base_analysis is not None:
        from ..compare import compare

        removed = compare(base_analysis.structure, analysis.structure).layer_matching.removed_original_layers
    checkpoint = analysis.checkpoint
    folder = _folder(checkpoint.path)
    return ExportSource(path=path, structure=analysis.structure, config=config, family=family, index=index,
                        layers=layers, outside=outside, checkpoint_kind=checkpoint.kind, folder=folder,
                        base=base_analysis.structure if base_analysis else None,
                        base_config=base_analysis.config if base_analysis else None, removed_base_layers=removed,
                        base_folder=_folder(base_analysis.checkpoint.path) if base_analysis else None)


def _folder(path: str) -> str:
    """Where a checkpoint's companion files (config, tokenizer) lie."""
    return path if os.path.isdir(path) else os.path.dirname(path) or "."


def tokenizer_places(source: ExportSource, tokenizer: str | None) -> list[str]:
    """Where to look for the HF tokenizer files, in order: --tokenizer, the model's folder, the base's."""
    return [place for place in (tokenizer, source.folder, source.base_folder) if place]


def _source_layer(layer: LayerStructure, prefix: str, by_name: dict) -> SourceLayer:
    projections: dict[str, dict] = {}
    norms, others = {}, []
    start = f"{prefix}.{layer.layer_idx}."
    for name, (bucket, role) in layer.tensor_roles.items():
        tensor = by_name[name]
        if role in (Q, K, V, O, GATE, UP, DOWN):
            projections.setdefault(role, {})["weight" if name.endswith(".weight") else "bias"] = tensor
        elif role in (NORM, Q_NORM, K_NORM) and name.endswith(".weight"):  # q/k norms: per head, any head count
            norms[name[len(start):-len(".weight")]] = tensor
        else:
            others.append(name)
    return SourceLayer(structure=layer, norms=norms, others=tuple(others),
                       projections={role: Projection(**parts) for role, parts in projections.items() if "weight" in parts})


def read_array(tensor: TensorInfo) -> np.ndarray:
    """A tensor's values as a float array of its shape (bf16 widened to f32 exactly)."""
    data = read_bytes(tensor)
    if tensor.dtype == "BF16":
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(tensor.shape)
    if tensor.dtype not in NUMPY_TYPES:
        raise CheckpointError(tensor.file, f"{tensor.name} is {tensor.dtype}, not a float type an export can carry",
                              "export an unquantized checkpoint")
    return np.frombuffer(data, dtype=np.dtype(NUMPY_TYPES[tensor.dtype]).newbyteorder("<")).reshape(tensor.shape)


def read_bytes(tensor: TensorInfo) -> bytes:
    """The tensor's elements, contiguous, in the file's (little-endian) encoding."""
    parts = []
    with open(tensor.file, "rb") as handle:
        for start, length in tensor.byte_ranges():
            handle.seek(start)
            chunk = handle.read(length)
            if len(chunk) != length:
                raise CheckpointError(tensor.file, f"{tensor.name} ends past the end of the file", "the file is truncated")
            parts.append(chunk)
    return b"".join(parts)


def encode(values: np.ndarray, dtype: str) -> bytes:
    """Float values in a safetensors dtype: F32, F16 or BF16 (rounded to nearest even, as torch does)."""
    if dtype == "BF16":
        return bf16_bits(values).astype("<u2").tobytes()
    return np.ascontiguousarray(values, dtype=np.dtype(NUMPY_TYPES[dtype]).newbyteorder("<")).tobytes()


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) of float values, rounded to nearest even as torch rounds."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def temporary_beside(output: str) -> str:
    """A temporary name in `output`'s folder, to write under and then rename into place (whole or
    nothing); refuses an existing output and a folder that does not exist (a mistyped path)."""
    output = os.path.abspath(output)
    if os.path.lexists(output):
        raise CheckpointError(output, "already exists", "choose a new --output, or remove it first")
    if not os.path.isdir(os.path.dirname(output)):
        raise CheckpointError(output, "its folder does not exist", "create it, or choose another --output")
    return os.path.join(os.path.dirname(output), f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{os.path.basename(output)}")
