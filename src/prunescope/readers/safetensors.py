"""safetensors files, single or sharded: headers only, never tensor data."""

from __future__ import annotations

import json

from ..tensors import DTYPE_SIZES, CheckpointError, TensorInfo

# A real header is a few MB at most; a larger length means a corrupt or hostile file.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_file(path: str, files=None) -> list[TensorInfo]:
    """The tensors of one .safetensors file, checked against the file's real size. `files`: the local
    file access (readers/access.py) the checkpoint's measurements go on reading through; one of its
    own when not given."""
    if files is None:
        from .access import LocalFiles

        with LocalFiles() as own:
            return read_safetensors_file(path, own)
    try:
        file_size = files.size(path)
        header_size = _header_length(path, files.read(path, 0, 8), file_size)
        raw = files.read(path, 8, header_size)
    except OSError as error:
        raise CheckpointError(path, f"cannot read: {error.strerror or error}", "check the path and permissions") from None
    return parse_header(path, raw, file_size)


def _header_length(path: str, prefix: bytes, file_size: int) -> int:
    """The header length the first 8 bytes announce, if it fits the file."""
    if len(prefix) < 8:
        raise CheckpointError(path, "truncated safetensors file (no header)", "re-save or re-download it")
    header_size = int.from_bytes(prefix[:8], "little")
    if header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
        raise CheckpointError(path, f"header length {header_size} does not fit a {file_size}-byte file",
                              "the file is truncated or not safetensors")
    return header_size


def parse_header(path: str, raw: bytes, file_size: int) -> list[TensorInfo]:
    """The tensors a header (the bytes after the 8-byte length) describes, checked against the file size."""
    header_size = len(raw)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(path, "safetensors header is not valid JSON", "the file is corrupt") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object", "the file is corrupt")
    data_start = 8 + header_size
    tensors, spans = [], []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"malformed header entry for {name!r}", "the file is corrupt") from None
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise CheckpointError(path, f"tensor {name!r} has unknown dtype {dtype!r}", "upgrade prunescope or report it")
        count = 1
        for size in shape:
            if type(size) is not int or size < 0:
                raise CheckpointError(path, f"tensor {name!r} has an invalid shape {list(shape)}", "the file is corrupt")
            count *= size
        expected = count * DTYPE_SIZES[dtype]
        if not (type(begin) is int and type(end) is int and 0 <= begin <= end):
            raise CheckpointError(path, f"tensor {name!r} has invalid data offsets {[begin, end]}", "the file is corrupt")
        if end - begin != expected:
            raise CheckpointError(
                path, f"header lies about {name!r}: shape {list(shape)} {dtype} needs {expected} bytes, "
                f"offsets span {end - begin}", "the file is corrupt")
        if data_start + end > file_size:
            raise CheckpointError(
                path, f"truncated: {name!r} ends at byte {data_start + end} of a {file_size}-byte file",
                "re-save or re-download it")
        # Every field checked above, and the elements counted: the unchecked constructor takes them as they are.
        tensors.append(TensorInfo.unchecked(name, dtype, shape, path, data_start + begin, count))
        spans.append((begin, end, name))
    _check_layout(path, spans, file_size - data_start)
    return tensors


def _check_layout(path: str, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The safetensors library's own rule: sorted by offsets, the tensors' data (`spans`: begin, end and
    name, in bytes after the header) covers the byte buffer exactly, each tensor starting where the
    previous one ends. Overlapping tensors would alias each other's bytes; a gap or trailing bytes
    carry data no tensor declares."""
    hint = "the safetensors format refuses such offsets; the file is corrupt or crafted"
    previous, end = None, 0
    for begin, finish, name in sorted(spans):
        if begin < end:
            raise CheckpointError(path, f"tensor {name!r} overlaps {previous!r}: it starts at data byte {begin}, "
                                        f"before {previous!r} ends at {end}", hint)
        if begin > end:
            raise CheckpointError(path, f"tensor {name!r} starts at data byte {begin}, leaving bytes {end}-{begin} "
                                        "to no tensor", hint)
        end, previous = finish, name
    if end != data_size:
        raise CheckpointError(path, f"{data_size - end} bytes after the last tensor's data, which no tensor declares",
                              hint)


def read_safetensors_headers(paths: list[str], files, expected_tensors: dict[str, int]) -> list[list[TensorInfo]]:
    """The tensors of several files read through `files` (readers/access.py) with as few exact ranges as
    possible: one per file, sized for the header its shard index announces (`expected_tensors`: the
    number of tensors per file; 64 KiB when not known), and a second one only for a longer header."""
    firsts = [(path, 0, min(_first_range(expected_tensors.get(path)), files.size(path))) for path in paths]
    prefixes = list(files.read_ranges(firsts))
    header_sizes, more = [], []
    for path, prefix in zip(paths, prefixes):
        header_size = _header_length(path, prefix, files.size(path))
        header_sizes.append(header_size)
        if 8 + header_size > len(prefix):
            more.append((path, len(prefix), 8 + header_size - len(prefix)))
    rest = dict(zip((request[0] for request in more), files.read_ranges(more)))
    return [parse_header(path, (prefix + rest.get(path, b""))[8:8 + header_size], files.size(path))
            for path, prefix, header_size in zip(paths, prefixes, header_sizes)]


def _first_range(tensor_count: int | None) -> int:
    """Bytes that almost surely hold a header of `tensor_count` entries: a real entry
    ("model.layers.31.mlp.down_proj.weight":{"dtype":"BF16","shape":[4096,14336],"data_offsets":[...]})
    takes about 115 bytes (Llama-3-8B's shards: 82 tensors in 9.5 KB, 104 in 12.1 KB); rounded up to
    whole 4 KiB pages, at most 64 KiB. A longer header costs one more range, nothing else."""
    if not tensor_count:
        return 64 * 1024
    estimate = 8 + 256 + 160 * tensor_count
    return min(64 * 1024, -(-estimate // 4096) * 4096)
