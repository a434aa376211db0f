"""Stage 4: measure tensor contents, cheaply: which layers are all zeros, and a fingerprint per layer.

A float is zero when its bits without the sign are zero, so -0.0 counts as zero. Bytes are read
from the first element on and reading stops at the first nonzero value: a real weight matrix costs
one small read, and only an all-zero tensor is read to its end.

The fingerprint is a checksum of each layer's tensor names, shapes, dtypes and first pages (the very
bytes the zero test reads): a layer a depth-pruning method kept verbatim has the same fingerprint as
in the base model, which is how removed layers are identified (full comparison would read everything).
"""

from __future__ import annotations

import os

from ..interpret.structure import ModelStructure
from ..tensors import FLOAT_DTYPES, CheckpointError, TensorIndex, TensorInfo

FIRST_READ = 4096  # one page: almost every real tensor is decided here
CHUNK = 1 << 20
EXPERT_SAMPLE = 512  # bytes of each expert's tensors in its fingerprint: enough to tell experts apart


def measure_layers(structure: ModelStructure, index: TensorIndex) -> ModelStructure:
    """The structure with `is_zero_layer` and `fingerprint` filled in for every layer (and, in MoE
    layers, `expert_fingerprints`)."""
    import zlib

    by_name = {tensor.name: tensor for tensor in index.tensors}
    layers = []
    with _Files() as files:
        for layer in structure.layers:
            experts = layer.expert_tensors
            tensors = sorted((by_name[name] for name in layer.content_tensors if name not in experts), key=_local_name)
            first_pages = [_first_page(tensor, files) for tensor in tensors]
            expert_prints = _expert_fingerprints(experts, by_name, files)
            fingerprint = _fingerprint(tensors, first_pages)
            if expert_prints:  # an MoE layer: its experts enter the layer's fingerprint by theirs
                fingerprint = f"{zlib.crc32('|'.join(expert_prints).encode(), int(fingerprint, 16)):08x}"
            # The experts' bytes are read only when everything else in the layer is zero.
            is_zero = all(_is_all_zero(tensor, files, page) for tensor, page in zip(tensors, first_pages)) and \
                all(_is_all_zero(by_name[name], files, b"") for name in experts)
            layers.append(layer.replace(is_zero_layer=is_zero, fingerprint=fingerprint,
                                        expert_fingerprints=expert_prints))
    return structure.replace(layers=tuple(layers))


def _expert_fingerprints(expert_tensors: dict, by_name: dict, files: "_Files") -> tuple[str, ...]:
    """One fingerprint per routed expert, in the experts' order: the checksum of the name, shape and
    first bytes of its first tensor by name (w1 / gate_proj; a stacked gate_up_proj's slice): an expert
    kept verbatim matches, and random or trained weights differ in their first values already. One
    small read per expert keeps a Mixtral-8x7B header analysis near the cost of parsing it. Empty when a
    stacked tensor is not stored in one piece (its slices cannot be located cheaply)."""
    import zlib

    per_expert: dict[int, int] = {}
    first = min((_local_name(by_name[name]) for name in expert_tensors), default=None)
    for name, number in expert_tensors.items():
        tensor = by_name[name]
        local = _local_name(tensor)
        if local != first:
            continue  # one tensor per expert (its gate, or stacked gate_up) identifies it: one read each
        ranges = [(tensor.offset, tensor.numel * tensor.itemsize)] if tensor.stride is None else tensor.byte_ranges()
        stacked = number is None
        if not ranges or not ranges[0][1] or (stacked and (len(ranges) != 1 or not tensor.shape[0])):
            return ()
        start, length = ranges[0]
        count = tensor.shape[0] if stacked else 1
        share = length // count
        size = min(share, EXPERT_SAMPLE)
        for expert in range(count):
            sample = files.read(tensor.file, start + expert * share, size)
            if len(sample) != size:
                raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read in full",
                                      "re-save or re-download it")
            key = expert if stacked else number
            shape = tensor.shape[1:] if stacked else tensor.shape
            per_expert[key] = zlib.crc32(sample, zlib.crc32(
                f"{local}|{tensor.dtype}|{shape}".encode(), per_expert.get(key, 0)))
    return tuple(f"{per_expert[expert]:08x}" for expert in sorted(per_expert))


def _local_name(tensor: TensorInfo) -> str:
    """e.g. "self_attn.q_proj.weight" -> "q_proj.weight": the same whatever the layer's number."""
    return ".".join(tensor.name.split(".")[-2:])


def _fingerprint(tensors: list[TensorInfo], first_pages: list[bytes]) -> str:
    """CRC-32 of each tensor's name in the layer, dtype, shape and first page (already read for the
    zero test): a layer kept verbatim matches; retrained, merged or converted layers do not."""
    import zlib

    checksum = 0
    for tensor, page in zip(tensors, first_pages):
        checksum = zlib.crc32(f"{_local_name(tensor)}|{tensor.dtype}|{tensor.shape}".encode(), checksum)
        checksum = zlib.crc32(page, checksum)
    return f"{checksum:08x}"


def _first_page(tensor: TensorInfo, files: "_Files") -> bytes:
    ranges = tensor.byte_ranges()
    if not ranges:
        return b""
    start, length = ranges[0]
    size = min(length, FIRST_READ - FIRST_READ % tensor.itemsize)
    page = files.read(tensor.file, start, size)
    if len(page) != size:
        raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read in full",
                              "re-save or re-download it")
    return page


def _is_all_zero(tensor: TensorInfo, files: "_Files", first_page: bytes) -> bool:
    signed_float = tensor.dtype in FLOAT_DTYPES
    itemsize = tensor.itemsize
    if not _chunk_is_zero(first_page, itemsize, signed_float):
        return False  # decided by the page already read: the common case
    for number, (start, length) in enumerate(tensor.byte_ranges()):
        position, end = start, start + length
        if number == 0:
            position += len(first_page)
        while position < end:
            size = min(CHUNK, end - position)
            data = files.read(tensor.file, position, size)
            if len(data) != size:
                raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read in full",
                                      "re-save or re-download it")
            if not _chunk_is_zero(data, itemsize, signed_float):
                return False
            position += size
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
