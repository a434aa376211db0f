"""Stage 4: measure tensor contents, cheaply: which layers are all zeros, and a fingerprint per layer.

A float is zero when its bits without the sign are zero, so -0.0 counts as zero. Bytes are read
from the first element on and reading stops at the first nonzero value: a real weight matrix costs
one small read, and only an all-zero tensor is read to its end.

The fingerprint is a checksum of each layer's tensor names, shapes, dtypes and first pages (the very
bytes the zero test reads): a layer a depth-pruning method kept verbatim has the same fingerprint as
in the base model, which is how removed layers are identified (full comparison would read everything).
"""

from __future__ import annotations

import functools
from operator import itemgetter

from ..interpret.structure import CONTENT_BUCKETS, ModelStructure
from ..readers.access import LocalFiles
from ..quantized import BITMASK, BITMASK_24, BNB4, PACKED_ROWS, PLAIN, Encoded
from ..tensors import DTYPE_SIZES, FLOAT_DTYPES, CheckpointError, TensorIndex, TensorInfo

FIRST_READ = 4096  # one page: almost every real tensor is decided here
CHUNK = 1 << 20
HEAD = 64  # bytes the zero test looks at first
EXPERT_SAMPLE = 512  # bytes of each expert's tensors in its fingerprint: enough to tell experts apart


def measure_layers(structure: ModelStructure, index: TensorIndex, files=None) -> ModelStructure:
    """The structure with `is_zero_layer` and `fingerprint` filled in for every layer (and, in MoE
    layers, `expert_fingerprints`). `files` reads the bytes (readers/access.py; local files when not
    given): the first pages of every layer are asked for in one batch, which a remote model fetches
    concurrently."""
    if files is None:
        with LocalFiles() as local:
            return measure_layers(structure, index, local)
    import zlib

    by_name = {tensor.name: tensor for tensor in index.tensors}
    # A quantized weight is read as its stored codes (prunescope.quantized), in the logical one's place.
    codes = {name: item.data for name, item in index.encoded.items()}
    stored = {**by_name, **codes} if codes else by_name
    per_layer = []
    for layer in structure.layers:
        # The attention and MLP weights but the routed experts' (each sampled on its own), by their names
        # within the layer.
        experts = layer.expert_tensors
        named = sorted([(_local(name), name) for name, (bucket, _) in layer.tensor_roles.items()
                        if bucket in CONTENT_BUCKETS and name not in experts], key=_first)
        names = [name for _, name in named]
        tensors = [stored[name] for name in names]
        per_layer.append((names, tensors, [_local(tensor.name) for tensor in tensors] if codes else [n for n, _ in named]))
    pages = _first_pages([tensor for _, tensors, _ in per_layer for tensor in tensors], files)  # read as used
    layers = []
    for layer, (names, tensors, local_names) in zip(structure.layers, per_layer):
        first_pages = [next(pages) for _ in tensors]
        experts = layer.expert_tensors
        expert_prints = _expert_fingerprints(experts, stored, files) if experts else ()
        fingerprint = _fingerprint(tensors, local_names, first_pages)
        if expert_prints:  # an MoE layer: its experts enter the layer's fingerprint by theirs
            fingerprint = f"{zlib.crc32('|'.join(expert_prints).encode(), int(fingerprint, 16)):08x}"
        # The experts' bytes are read only when everything else in the layer is zero.
        is_zero = all(_is_all_zero(tensor, files, page) if name not in index.encoded
                      else _encodes_zeros(index.encoded[name], files, page)
                      for name, tensor, page in zip(names, tensors, first_pages)) and \
            all(_is_all_zero(by_name[name], files, b"") if name not in index.encoded
                else _encodes_zeros(index.encoded[name], files, b"") for name in experts)
        layers.append(layer.replace(is_zero_layer=is_zero, fingerprint=fingerprint,
                                    expert_fingerprints=expert_prints))
    return structure.replace(layers=tuple(layers))


def _encodes_zeros(item, files, first_page: bytes) -> bool:
    """Whether a quantized weight encodes only zeros. Values stored as themselves (fp8, int8, the
    bitmask formats' values) are tested like any tensor; codes whose zero is one constant byte are
    decided on the first page; the rest, and pages that may be all zeros, are decoded (numpy)."""
    if item.scheme in (PLAIN, BITMASK, BITMASK_24):
        return _is_all_zero(item.data, files, first_page)
    constant = _zero_byte(item)
    if constant is not None and first_page.count(constant) != len(first_page):
        return False
    from .scan_quantized import is_all_zero

    return is_all_zero(item)


def _zero_byte(item: Encoded) -> int | None:
    """The byte a run of zero values is stored as, where that is one constant (symmetric packing,
    NF4), so the zero-layer test can decide on raw bytes; None where zero points vary."""
    if item.scheme == PACKED_ROWS and item.symmetric:
        middle = 1 << (item.bits - 1)
        return {4: middle * 0x11, 8: middle, 2: middle * 0x55}.get(item.bits)
    if item.scheme == BNB4 and len(item.parts["zero_codes"]) == 1:
        return item.parts["zero_codes"][0] * 0x11
    return None



def _expert_fingerprints(expert_tensors: dict, by_name: dict, files) -> tuple[str, ...]:
    """One fingerprint per routed expert, in the experts' order: the checksum of the name, shape and
    first bytes of its first tensor by name (w1 / gate_proj; a stacked gate_up_proj's slice): an expert
    kept verbatim matches, and random or trained weights differ in their first values already. One
    small read per expert keeps a Mixtral-8x7B header analysis near the cost of parsing it. Empty when a
    stacked tensor is not stored in one piece (its slices cannot be located cheaply)."""
    import zlib

    per_expert: dict[int, int] = {}
    wanted = []  # (expert, its label, tensor, (file, offset, size))
    first, chosen = None, []  # one tensor per expert (its gate, or stacked gate_up) identifies it: one read each
    for name in expert_tensors:
        local = _local(by_name[name].name)  # of the tensor read: a quantized expert's codes
        if first is None or local < first:
            first, chosen = local, [name]
        elif local == first:
            chosen.append(name)
    for name in chosen:
        tensor, number = by_name[name], expert_tensors[name]
        if number is not None and tensor.stride is None and tensor.nbytes is None:  # one expert's, in one piece
            size = min(tensor.numel * DTYPE_SIZES[tensor.dtype], EXPERT_SAMPLE)
            if not size:
                return ()
            wanted.append((number, _label(first, tensor.dtype, tensor.shape), tensor, (tensor.file, tensor.offset, size)))
            continue
        ranges = tensor.byte_ranges()
        stacked = number is None
        if not ranges or not ranges[0][1] or (stacked and (len(ranges) != 1 or not tensor.shape[0])):
            return ()
        start, length = ranges[0]
        count = tensor.shape[0] if stacked else 1
        share = length // count
        size = min(share, EXPERT_SAMPLE)
        shape = tensor.shape[1:] if stacked else tensor.shape
        for expert in range(count):
            wanted.append((expert if stacked else number, _label(first, tensor.dtype, shape), tensor,
                           (tensor.file, start + expert * share, size)))
    # One batch of small reads (concurrent for a remote model).
    samples = _read_exact(files, [(tensor, request) for _, _, tensor, request in wanted])
    label_checksums: dict[bytes, int] = {}  # every expert's label is the same: checksummed once
    for (key, label, _, _), sample in zip(wanted, samples):
        if key in per_expert:
            start = zlib.crc32(label, per_expert[key])
        else:
            start = label_checksums.get(label)
            if start is None:
                start = label_checksums[label] = zlib.crc32(label)
        per_expert[key] = zlib.crc32(sample, start)
    return tuple(f"{per_expert[expert]:08x}" for expert in sorted(per_expert))


def _local(name: str) -> str:
    """e.g. "model.layers.3.self_attn.q_proj.weight" -> "q_proj.weight": the same whatever the layer's number."""
    return name[name.rfind(".", 0, name.rfind(".")) + 1:]  # after the second-to-last dot (the whole name if none)


_first = itemgetter(0)


def _fingerprint(tensors: list[TensorInfo], local_names: list[str], first_pages: list[bytes]) -> str:
    """CRC-32 of each tensor's name in the layer, dtype, shape and first page (already read for the
    zero test): a layer kept verbatim matches; retrained, merged or converted layers do not."""
    import zlib

    checksum = 0
    for tensor, local_name, page in zip(tensors, local_names, first_pages):
        checksum = zlib.crc32(_label(local_name, tensor.dtype, tensor.shape), checksum)
        checksum = zlib.crc32(page, checksum)
    return f"{checksum:08x}"


@functools.lru_cache(maxsize=1024)  # every layer (and expert) repeats the same few
def _label(local_name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    return f"{local_name}|{dtype}|{shape}".encode()


def _first_pages(tensors: list[TensorInfo], files):
    wanted = []
    for tensor in tensors:
        if tensor.stride is None and tensor.nbytes is None:  # in one piece: byte_ranges' answer, without its call
            itemsize = DTYPE_SIZES[tensor.dtype]
            start, length = tensor.offset, tensor.numel * itemsize
        else:
            itemsize = tensor.itemsize
            ranges = tensor.byte_ranges()
            start, length = ranges[0] if ranges else (0, 0)
        wanted.append((tensor, (tensor.file, start, min(length, FIRST_READ - FIRST_READ % itemsize))))
    return _read_exact(files, wanted)


def _read_exact(files, wanted: list[tuple[TensorInfo, tuple[str, int, int]]]):
    """The bytes of each (tensor, (file, offset, size)) request, asked for in one batch (empty ones are
    not asked) and handed on one by one; a short read means the file is shorter than its header says."""
    fetched = iter(files.read_ranges([request for _, request in wanted if request[2]]))
    for tensor, (_, _, size) in wanted:
        page = next(fetched) if size else b""
        if len(page) != size:
            raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read in full",
                                  "re-save or re-download it")
        yield page


def _is_all_zero(tensor: TensorInfo, files, first_page: bytes) -> bool:
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
            data = next(_read_exact(files, [(tensor, (tensor.file, position, size))]))
            if not _chunk_is_zero(data, itemsize, signed_float):
                return False
            position += size
    return True


def _chunk_is_zero(data: bytes, itemsize: int, signed_float: bool) -> bool:
    # A real weight is decided by its first values: look at those before passing over the whole page.
    if data[:HEAD].translate(None, b"\x00\x80" if signed_float else b"\x00"):
        return False
    if data.count(0) == len(data):
        return True
    if not signed_float or data.translate(None, b"\x00\x80"):
        return False  # some byte other than 0x00 / 0x80: certainly a nonzero value
    # Only 0x00 and 0x80 bytes: zero exactly when every 0x80 is a sign bit, i.e. sits in the last
    # (most significant, little-endian) byte of its element.
    if itemsize == 1:
        return True
    return data.count(0x80) == data[itemsize - 1::itemsize].count(0x80)
