"""Stage 4: measure tensor contents, cheaply: which layers are all zeros, and a fingerprint per layer.

A float is zero when its bits without the sign are zero, so -0.0 counts as zero. Bytes are read
from the first element on and reading stops at the first nonzero value: a real weight matrix costs
one small read, and only an all-zero tensor is read to its end.

The fingerprint hashes each layer's shapes, dtypes and a few KB sampled from the start, middle and
end of its tensors: a layer a depth-pruning method kept verbatim has the same fingerprint as in the
base model, which is how removed layers are identified (full comparison would read everything).
"""

from __future__ import annotations

import os

from .structure import ModelStructure
from .tensors import FLOAT_DTYPES, CheckpointError, TensorIndex, TensorInfo

FIRST_READ = 4096  # one page: almost every real tensor is decided here
CHUNK = 1 << 20


SAMPLE = 4096  # bytes hashed at each of three places per tensor


def measure_layers(structure: ModelStructure, index: TensorIndex) -> ModelStructure:
    """The structure with `is_zero_layer` and `fingerprint` filled in for every layer."""
    by_name = {tensor.name: tensor for tensor in index.tensors}
    with _Files() as files:
        layers = tuple(
            layer.replace(is_zero_layer=all(_is_all_zero(by_name[name], files) for name in layer.content_tensors),
                    fingerprint=_fingerprint([by_name[name] for name in layer.content_tensors], files))
            for layer in structure.layers)
    return structure.replace(layers=layers)


def _fingerprint(tensors: list[TensorInfo], files: "_Files") -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    # Names relative to the layer, so that renumbered layers still match.
    def local_name(tensor):  # e.g. "q_proj.weight": unique within a layer, whatever the layer's number
        return ".".join(tensor.name.split(".")[-2:])

    for tensor in sorted(tensors, key=local_name):
        digest.update(f"{local_name(tensor)}|{tensor.dtype}|{tensor.shape}".encode())
        ranges = tensor.byte_ranges()
        if not ranges:
            continue
        first, last = ranges[0], ranges[-1]
        middle = ranges[len(ranges) // 2]
        for start, length in ((first[0], first[1]), (middle[0] + middle[1] // 2, middle[1] - middle[1] // 2),
                              (last[0] + max(0, last[1] - SAMPLE), min(last[1], SAMPLE))):
            digest.update(files.read(tensor.file, start, min(length, SAMPLE)))
    return digest.hexdigest()


def _is_all_zero(tensor: TensorInfo, files: "_Files") -> bool:
    signed_float = tensor.dtype in FLOAT_DTYPES
    itemsize = tensor.itemsize
    for start, length in tensor.byte_ranges():
        position, end, step = start, start + length, FIRST_READ
        while position < end:
            size = min(step - step % itemsize, end - position)
            data = files.read(tensor.file, position, size)
            if len(data) != size:
                raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read in full",
                                      "re-save or re-download it")
            if not _chunk_is_zero(data, itemsize, signed_float):
                return False
            position += size
            step = CHUNK
    return True


def _chunk_is_zero(data: bytes, itemsize: int, signed_float: bool) -> bool:
    if data.count(0) == len(data):
        return True
    if not signed_float or data.translate(None, b"\x00\x80"):
        return False  # some byte other than 0x00 / 0x80: certainly a nonzero value
    # Only 0x00 and 0x80 bytes: zero exactly when every 0x80 is a sign bit, i.e. sits in the last
    # (most significant, little-endian) byte of its element.
    if itemsize == 1:
        return True
    return data.count(0x80) == data[itemsize - 1::itemsize].count(0x80)

class _Files:
    """Open file descriptors, one per file, for positional reads; closed when the measurement ends."""

    def __init__(self):
        self._fds: dict[str, int] = {}

    def read(self, path: str, offset: int, size: int) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as error:
                raise CheckpointError(path, f"cannot read: {error.strerror or error}", "check permissions") from None
        if hasattr(os, "pread"):
            return os.pread(fd, size, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
