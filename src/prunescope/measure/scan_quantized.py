"""Stage 4 for quantized weights: which of the dense model's values are zero, from the stored codes.

Nothing is dequantized. A value is zero when its code encodes 0: a packed code equal to its zero
point (the symmetric zero point is the middle code), a bitsandbytes code whose table entry is 0, a
bitmask bit that is clear (the 2:4 bitmask marks kept positions, whose values may still be 0). Each
weight's nonzero mask is built in the dense model's layout (packing order undone; act-order needs
nothing, since codes stay in input order and `g_idx` only says which zero point applies), then counted
by the dense scan's block counter, so N:M groups, zero rows and columns mean what they mean for dense
weights. Layouts: shared/notes/quantized.md.
"""

from __future__ import annotations

import os

from ..quantized import AWQ, AWQ_GEMV, BITMASK, BITMASK_24, BNB4, GPTQ, INT_ZERO_POINT, PACKED_ROWS, Encoded
from ..tensors import FLOAT_DTYPES, CheckpointError, TensorInfo

NUMPY_TYPES = {"I32": "<u4", "U8": "u1", "I8": "i1", "I64": "<i8", "F8_E4M3": "u1", "F8_E5M2": "u1",
               "BF16": "<u2", "F16": "<u2", "F32": "<u4"}
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k of an AWQ word holds output column 8c + AWQ_ORDER[k]


def scan_encoded(items: list[Encoded], workers: int | None = None, progress=None, per_row_groups=frozenset()) -> dict:
    """TensorContents of every encoded weight, keyed by its logical name, on all cores."""
    from concurrent.futures import ThreadPoolExecutor

    from .scan import contents_of_blocks, count_rows

    def one(item: Encoded):
        per_row = item.logical.name in per_row_groups
        if _packed_nibbles(item):
            contents = contents_of_blocks(item.logical, _count_packed_nibbles(item, per_row))
        else:
            contents = count_rows(item.logical, nonzero_mask(item), per_row)
        if progress:
            progress(item.data.numel * item.data.itemsize)
        return contents

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return {contents.name: contents for contents in pool.map(one, items)}


def is_all_zero(item: Encoded) -> bool:
    """Whether every value the weight encodes is zero: the first stored rows decide almost always."""
    return not nonzero_mask(item, first_rows=True).any() and not nonzero_mask(item).any()


def nonzero_mask(item: Encoded, first_rows: bool = False):
    """A bool array [out, in] (the dense weight's layout): True where the stored value is not zero.
    With `first_rows`, only a few stored rows are decoded (any layout; for a quick nonzero test)."""
    decode = {PACKED_ROWS: _packed_rows, GPTQ: _gptq, AWQ: _awq, AWQ_GEMV: _awq_gemv, BNB4: _bnb4, BITMASK: _bitmask,
              BITMASK_24: _bitmask_24, INT_ZERO_POINT: _int_zero_point}.get(item.scheme)
    if decode is None:
        raise CheckpointError(item.data.file, f"{item.logical.name}: no content scan for {item.scheme}", "")
    return decode(item, 8 if first_rows else None)


# -- the fast path: 4-bit codes packed along rows, counted without unpacking ------------------


def _packed_nibbles(item: Encoded) -> bool:
    """compressed-tensors int4 rows whose zero code is one per row group (no act-order), and whose rows
    and groups fill whole words: counted on the words themselves (the common W4A16 case)."""
    import numpy as np

    in_features = item.logical.shape[1]
    return hasattr(np, "bitwise_count") and item.scheme == PACKED_ROWS and item.bits == 4 and "g_idx" not in item.parts and in_features % 8 == 0 \
        and (item.symmetric or (item.group_size or in_features) % 8 == 0 and in_features % (item.group_size or in_features) == 0)


def _count_packed_nibbles(item: Encoded, per_row_groups: bool):
    """count_block's results, block by block, computed on the packed words with a few integer passes
    (SWAR) over a quarter of bf16's bytes, values never unpacked. A word holds values 8w..8w+7 of a
    row, one per nibble; XOR with the zero code's nibbles makes a nibble 0 exactly when its value is 0.
    Then one bit per nonzero value (bit 4k), and multiplications sum those bits into one nibble:
    x * 0x1111 sums each half-word's 4 values (a 2:4 group) into its top nibble, x * 0x11111111 the
    word's 8 (a 4:8 group) into bits 28-31; no partial sum reaches 16, so nothing carries over."""
    import numpy as np

    from .scan import CHUNK_BYTES

    out_features, in_features = item.logical.shape
    words = _array(item.data)  # [out, in / 8] uint32: value 8w + k at bits 4k..4k+3 of word w
    zero_words = None
    if not item.symmetric:
        zero_points = _row_zero_points(item)
        zero_words = zero_points.astype(np.uint32) * np.uint32(0x11111111)
        zero_words = np.repeat(zero_words, (item.group_size or in_features) // 8, axis=1)
    step = max(1, CHUNK_BYTES // max(1, 4 * words.shape[1]))
    first, second = (np.empty((min(step, out_features), words.shape[1]), dtype=np.uint32) for _ in range(2))
    u32 = np.uint32
    for start in range(0, out_features, step):
        block = words[start:start + step]
        rows = block.shape[0]
        codes, bits = first[:rows], second[:rows]
        np.bitwise_xor(block, u32(0x88888888) if zero_words is None else zero_words[start:start + step], out=codes)
        np.bitwise_and(codes, u32(0x77777777), out=bits)
        np.add(bits, u32(0x77777777), out=bits)  # bit 3 of a nibble: its low 3 bits are not all 0
        np.bitwise_or(bits, codes, out=bits)
        np.right_shift(bits, u32(3), out=bits)
        np.bitwise_and(bits, u32(0x11111111), out=bits)  # bit 4k: value k of the word is not 0
        np.multiply(bits, u32(0x1111), out=codes)
        np.add(codes, u32(0x50005000), out=codes)  # a half-word's count + 5 reaches 8 when over 2
        np.bitwise_and(codes, u32(0x80008000), out=codes)
        broken = np.count_nonzero(codes.view(np.uint16), axis=1 if per_row_groups else None)
        groups = {"2:4": in_features // 4 * (1 if per_row_groups else rows) - broken}
        np.multiply(bits, u32(0x11111111), out=codes)
        np.right_shift(codes, u32(28), out=codes)  # nonzero values of each word
        broken = np.count_nonzero(codes > 4, axis=1 if per_row_groups else None)
        groups["4:8"] = in_features // 8 * (1 if per_row_groups else rows) - broken
        row_counts = np.add.reduce(codes, axis=1, dtype=np.uint32).astype(np.int64)
        either = np.bitwise_or.reduce(bits, axis=0)
        columns = ((either[:, None] >> np.arange(0, 32, 4, dtype=np.uint32)) & u32(1)).astype(bool).reshape(-1)
        if not per_row_groups:
            groups = {pattern: int(count) for pattern, count in groups.items()}
        yield start, rows, (int(row_counts.sum()), groups, row_counts, columns)


# -- reading ------------------------------------------------------------------------------------


def _array(tensor: TensorInfo, rows: int | None = None):
    """The stored tensor (or its first `rows` rows) as a numpy array of its shape."""
    import numpy as np

    if tensor.stride is not None:
        raise CheckpointError(tensor.file, f"{tensor.name}: a strided quantized tensor", "re-save the model")
    shape = tuple(tensor.shape) or (1,)
    if rows is not None and len(shape) >= 1:
        shape = (min(rows, shape[0]),) + shape[1:]
    count = 1
    for size in shape:
        count *= size
    try:
        values = np.fromfile(tensor.file, dtype=np.dtype(NUMPY_TYPES[tensor.dtype]), count=count, offset=tensor.offset)
    except (OSError, ValueError) as error:
        raise CheckpointError(tensor.file, f"cannot read {tensor.name}: {error}", "is the file truncated?") from None
    if values.size != count:
        raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read in full", "re-save or re-download it")
    return values.reshape(shape)


def _unpack(words, bits: int):
    """Codes of int32 words (as uint32), element k of a word at bits k*bits.. (LSB first), along the
    last axis: [..., n] words -> [..., n * 32/bits] codes (uint8)."""
    import numpy as np

    as_bytes = np.ascontiguousarray(words).view(np.uint8)  # little-endian: byte j holds elements of bits 8j..
    if bits == 8:
        return as_bytes
    per_byte = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    codes = np.empty(as_bytes.shape + (per_byte,), dtype=np.uint8)
    for k in range(per_byte):
        np.bitwise_and(np.right_shift(as_bytes, bits * k), mask, out=codes[..., k])
    return codes.reshape(as_bytes.shape[:-1] + (as_bytes.shape[-1] * per_byte,))


def _per_column(zero_points, columns: int, group_size: int | None, g_idx):
    """Zero points [rows, groups] -> one per column [rows, columns]: column c uses group g_idx[c]
    (act-order) or c // group_size."""
    import numpy as np

    if g_idx is not None:
        return np.take(zero_points, g_idx, axis=1)
    if zero_points.shape[1] == 1:
        return zero_points
    return np.repeat(zero_points, group_size, axis=1)[:, :columns]


def _row_zero_points(item: Encoded):
    """compressed-tensors' zero points, packed along the output dimension, as [out, groups] codes."""
    out_features = item.logical.shape[0]
    stored = item.parts["zero_point"]
    groups = item.parts["scale"].shape[1] if len(item.parts["scale"].shape) == 2 else 1
    if item.parts["scale"].shape[0] != out_features or len(stored.shape) != 2 or stored.shape[1] != groups:
        raise CheckpointError(stored.file, f"{stored.name}: zero points {list(stored.shape)} per block, not per "
                                           "row and group", "the content scan decodes group and channel zero points")
    return _unpack(_array(stored).T, item.bits)[:, :out_features].T


def _g_idx(item: Encoded):
    import numpy as np

    g_idx = item.parts.get("g_idx")
    if g_idx is None:
        return None
    values = _array(g_idx).astype(np.int64)
    groups = item.parts["scale"].shape[0 if item.scheme == GPTQ else 1]
    if values.size and (values.min() < 0 or values.max() >= groups):
        raise CheckpointError(g_idx.file, f"{g_idx.name}: group indexes outside 0..{groups - 1}", "the file is corrupt")
    return values


# -- one function per scheme: the nonzero mask in the dense layout -------------------------------


def _packed_rows(item: Encoded, rows: int | None):
    """compressed-tensors pack-quantized: rows of the dense weight, codes + 2^(bits-1) packed LSB first;
    zero points (asymmetric) packed along the output dimension."""
    import numpy as np

    out_features, in_features = item.logical.shape
    codes = _unpack(_array(item.data, rows), item.bits)[:, :in_features]
    if item.symmetric:
        return codes != np.uint8(1 << (item.bits - 1))
    zero_points = _row_zero_points(item)
    zero_points = zero_points[:codes.shape[0]]
    return codes != _per_column(zero_points, in_features, item.group_size, _g_idx(item))


def _gptq(item: Encoded, rows: int | None):
    """GPTQ: W^T packed along inputs; code == zero point (+1 in v1) where the value is 0."""
    import numpy as np

    out_features, in_features = item.logical.shape
    words = _array(item.data, rows)  # [in / per_word, out]
    per_word = 32 // item.bits
    codes = np.stack([_field(words, item.bits, k) for k in range(per_word)], axis=1)  # [in/pw, pw, out]
    codes = codes.reshape(-1, out_features)  # W^T rows: inputs
    zero_points = _unpack(_array(item.parts["zero_point"]), item.bits)[:, :out_features]  # [groups, out]
    zero_points = (zero_points + np.uint8(item.zero_offset)) & np.uint8((1 << item.bits) - 1)
    g_idx = _g_idx(item)
    if g_idx is None:
        g_idx = np.arange(in_features) // (item.group_size or in_features)
    mask_t = codes != np.take(zero_points, g_idx[:codes.shape[0]], axis=0)
    return np.ascontiguousarray(mask_t.T)


def _field(words, bits: int, k: int):
    import numpy as np

    return (np.right_shift(words, bits * k) & np.uint32((1 << bits) - 1)).astype(np.uint8)


def _awq(item: Encoded, rows: int | None):
    """AWQ GEMM: W^T packed along outputs in AWQ's order; zero points packed the same way, so codes
    are compared with them still packed and the column order is undone once."""
    import numpy as np

    out_features, in_features = item.logical.shape
    codes = _unpack(_array(item.data, rows), 4)  # [in, out] in packed order
    zero_points = _unpack(_array(item.parts["zero_point"]), 4)  # [groups, out] in packed order
    group_size = item.group_size or in_features
    zero_rows = np.repeat(zero_points, group_size, axis=0)[:codes.shape[0]]
    mask_t = codes != zero_rows
    inverse = [AWQ_ORDER.index(column) for column in range(8)]  # packed position of each output column
    mask_t = mask_t.reshape(codes.shape[0], -1, 8)[:, :, inverse].reshape(codes.shape[0], out_features)
    return np.ascontiguousarray(mask_t.T)


def _awq_gemv(item: Encoded, rows: int | None):
    """AWQ GEMV: rows of the dense weight packed in order; each row's group zero points packed in order."""
    out_features, in_features = item.logical.shape
    codes = _unpack(_array(item.data, rows), 4)[:, :in_features]
    zero_points = _unpack(_array(item.parts["zero_point"], rows), 4)[:, :in_features // item.group_size]
    return codes != _per_column(zero_points, in_features, item.group_size, None)


def _bnb4(item: Encoded, rows: int | None):
    """bitsandbytes 4-bit: flat codes, first element in the high nibble; zero where the table is 0."""
    import numpy as np

    out_features, in_features = item.logical.shape
    data = _array(item.data, None if rows is None else -(-rows * in_features // 2)).reshape(-1)
    codes = np.empty((data.size, 2), dtype=np.uint8)
    np.right_shift(data, 4, out=codes[:, 0])
    np.bitwise_and(data, np.uint8(15), out=codes[:, 1])
    count = out_features * in_features if rows is None else min(rows, out_features) * in_features
    codes = codes.reshape(-1)[:count]
    mask = np.isin(codes, np.array(item.parts["zero_codes"], dtype=np.uint8), invert=True)
    return mask.reshape(-1, in_features)


def _bitmask(item: Encoded, rows: int | None):
    """sparse-bitmask: the bitmask is exactly the nonzeros (bit j % 8 of byte j // 8 is column j)."""
    import numpy as np

    in_features = item.logical.shape[1]
    return np.unpackbits(_array(item.parts["bitmask"], rows), axis=1, bitorder="little")[:, :in_features].astype(bool)


def _bitmask_24(item: Encoded, rows: int | None):
    """sparse-24-bitmask: the bitmask marks the 2 kept positions of every 4, whose values (row-major,
    2 per group) may themselves be 0."""
    import numpy as np

    kept = _bitmask(item, rows)
    values = _array(item.data, rows)
    if item.data.dtype in FLOAT_DTYPES:
        nonzero = np.left_shift(values, 1) != 0  # drops the sign bit: -0.0 is zero
    else:
        nonzero = values != 0
    if kept.sum(dtype=np.int64) != values.size:
        raise CheckpointError(item.data.file, f"{item.data.name}: the 2:4 bitmask does not keep two of every four "
                                              "values", "the file is corrupt")
    mask = np.zeros(kept.shape, dtype=bool)
    mask[kept] = nonzero.reshape(-1)
    return mask


def _int_zero_point(item: Encoded, rows: int | None):
    """int8 codes in the dense layout with zero points per channel (or group)."""
    import numpy as np

    codes = _array(item.data, rows)
    zero_points = _array(item.parts["zero_point"]).astype(np.int16)
    zero_points = zero_points.reshape(zero_points.shape[0], -1)[:codes.shape[0]]
    return codes.astype(np.int16) != _per_column(zero_points, codes.shape[1], item.group_size, None)
