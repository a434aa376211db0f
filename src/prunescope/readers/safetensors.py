"""safetensors files, single or sharded: headers only, never tensor data."""

from __future__ import annotations

import json
import os

from ..tensors import DTYPE_SIZES, CheckpointError, TensorInfo

# A real header is a few MB at most; a larger length means a corrupt or hostile file.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_file(path: str) -> list[TensorInfo]:
    """The tensors of one .safetensors file, checked against the file's real size."""
    try:
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(path, "truncated safetensors file (no header)", "re-save or re-download it")
            header_size = int.from_bytes(prefix, "little")
            if header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
                raise CheckpointError(
                    path, f"header length {header_size} does not fit a {file_size}-byte file",
                    "the file is truncated or not safetensors")
            raw = handle.read(header_size)
    except OSError as error:
        raise CheckpointError(path, f"cannot read: {error.strerror or error}", "check the path and permissions") from None
    try:
        header = json.loads(raw)
    except ValueError:
        raise CheckpointError(path, "safetensors header is not valid JSON", "the file is corrupt") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object", "the file is corrupt")
    data_start = 8 + header_size
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"malformed header entry for {name!r}", "the file is corrupt") from None
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(path, f"tensor {name!r} has unknown dtype {dtype!r}", "upgrade prunescope or report it")
        if not all(isinstance(size, int) and size >= 0 for size in shape):
            raise CheckpointError(path, f"tensor {name!r} has an invalid shape {list(shape)}", "the file is corrupt")
        info = TensorInfo(name=name, dtype=dtype, shape=shape, file=path, offset=data_start + begin)
        expected = info.numel * info.itemsize
        if not (isinstance(begin, int) and isinstance(end, int)) or end - begin != expected or begin < 0:
            raise CheckpointError(
                path, f"header lies about {name!r}: shape {list(shape)} {dtype} needs {expected} bytes, "
                f"offsets span {end - begin}", "the file is corrupt")
        if data_start + end > file_size:
            raise CheckpointError(
                path, f"truncated: {name!r} ends at byte {data_start + end} of a {file_size}-byte file",
                "re-save or re-download it")
        tensors.append(info)
    return tensors

