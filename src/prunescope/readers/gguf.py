"""GGUF files (llama.cpp): tensor names, logical shapes and byte ranges from the header, and the
metadata as a flat config. Read with the `gguf` package's reader (the export extra), which maps the
file and parses the header; no tensor data is read here.

GGUF lists a tensor's dimensions innermost first; the logical shape is the reverse (rows first), as
transformers and the other readers give it. Quantized GGML types (Q4_K, ...) are counted by their
logical elements; their byte size comes from the file. A GGUF file does not say which tensors are
parameters: llama.cpp's precomputed RoPE factors (`rope_freqs`) are not, and the family table says so.
"""

from __future__ import annotations

from ..tensors import CheckpointError, TensorIndex, TensorInfo

# GGML element types that are plain numbers, by the safetensors codes the other readers use.
PLAIN_TYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64", "I8": "I8", "I16": "I16", "I32": "I32",
               "I64": "I64"}
SKIPPED_KEYS = ("tokenizer.",)  # vocabularies: large, and not about the model's shapes


def read_gguf_file(path: str) -> TensorIndex:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise CheckpointError(path, "reading GGUF needs the `gguf` package", "pip install 'prunescope[export]'") from None
    try:
        reader = GGUFReader(path)
    except OSError as error:
        raise CheckpointError(path, f"cannot read: {error.strerror or error}", "check the path and permissions") from None
    except Exception as error:  # noqa: BLE001 - the package's own parse errors, one line
        raise CheckpointError(path, f"not a valid GGUF file ({type(error).__name__}: {str(error)[:120]})",
                              "the file is truncated or corrupt") from None
    metadata = _metadata(reader)
    tensors = []
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        shape = tuple(int(size) for size in reversed(tensor.shape.tolist()))
        tensors.append(TensorInfo(name=tensor.name, dtype=PLAIN_TYPES.get(kind, kind), shape=shape, file=path,
                                  offset=int(tensor.data_offset), nbytes=int(tensor.n_bytes)))
    return TensorIndex(format="gguf", files=(path,), tensors=tuple(tensors), embedded_config=metadata)


def _metadata(reader) -> dict:
    """Header keys as a config: `<arch>.attention.head_count` becomes `attention.head_count` (a list for
    per-layer values), plus `format: gguf` and `model_type: <arch>`."""
    arch_field = reader.fields.get("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else "unknown"
    config: dict = {"format": "gguf", "model_type": arch}
    for key, field in reader.fields.items():
        if key.startswith(SKIPPED_KEYS) or key.startswith("GGUF."):
            continue
        try:
            value = field.contents()
        except Exception:  # noqa: BLE001 - a field the package cannot decode says nothing about shapes
            continue
        config[key[len(arch) + 1:] if key.startswith(arch + ".") else key] = value
    return config
