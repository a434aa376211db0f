"""The content scan's counting loop, compiled with numba: one pass over a block's bytes.

scan.count_block's numpy way makes several passes over every block (compare, count, group sums,
column OR), each with a temporary the size of the block. Here each row is read once, a 64-bit word at
a time (a 32-bit word for 1-byte elements), and everything is counted from that word while it sits in
a register; nothing is allocated but the per-row and per-column results.

How a word is counted (SWAR, "SIMD within a register"): a word holds `lanes` elements. Adding the
all-bits-but-the-sign mask to an element's bits without the sign carries into the lane's top bit
exactly when the element is nonzero (so -0.0 is zero); for integers the element's own top bit is
or-ed in. `flags` then has one bit per nonzero element, at the top of its lane; shifted to the bottom
of each lane and multiplied by 0x..010101, the word's nonzero count lands in its top lane. A group
of 4 consecutive elements is 1 word (1- and 2-byte elements), 2 words (4-byte) or 4 words (8-byte).

Imported only by the scan, and only where numba is installed (a dependency of prunescope; a Python it
has no wheels for yet still scans, with scan.count_block's numpy way: the same numbers). Compiled code
is cached where numba finds a writable folder (NUMBA_CACHE_DIR, else __pycache__ beside this file,
else the user's cache folder), never beside a checkpoint; with none, it is compiled in memory.
"""

from __future__ import annotations

import numba
import numpy as np

WORD_BYTES = {1: 4, 2: 8, 4: 8, 8: 8}  # element bytes -> word bytes: 4 lanes, or 64 bits
LANE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _jit(function):
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:  # numba found no writable cache folder: compiled in memory, every run
        return numba.njit(nogil=True)(function)


@numba.njit(inline="always")
def _nonzero_flags(bits, magnitude, high, sign):
    """The top bit of every lane of `bits` that holds a nonzero element, the rest zero."""
    return (((bits & magnitude) + magnitude) | (bits & sign)) & high


@numba.njit(inline="always")
def _lanes_set(flags, ones, lane_shift, sum_shift):
    # numba computes in 64 bits, so a 32-bit word's sum is masked out of the product
    return (((flags >> lane_shift) * ones) >> sum_shift) & np.uint64(0xFF)


def _make_counter(words_per_group: int):
    """The counting loop for groups of 4 elements that span `words_per_group` words: a constant of the
    compiled code, so that the inner loop unrolls and the row loop vectorises."""
    words_per_8 = 2 * words_per_group

    def count_words(words, magnitude, high, sign, ones, lane_shift, sum_shift, row_counts, compliant_4,
                    compliant_8, columns):
        """Per row of `words` (rows x words per row): its nonzero elements, its groups of 4 with at
        most 2 nonzeros and of 8 with at most 4 (meaningful where the rows split into such groups);
        `columns` (one word per word of a row) gets every row's flags or-ed in."""
        rows, per_row = words.shape
        two, four = np.uint64(2), np.uint64(4)  # unsigned throughout: mixed signs would become floats
        for row in range(rows):
            values = words[row]
            count, complying_4, complying_8 = np.uint64(0), np.uint64(0), np.uint64(0)
            for group in range(per_row // words_per_8):  # 8 elements, two groups of 4, per iteration
                first_half, second_half = np.uint64(0), np.uint64(0)
                for offset in range(words_per_8):
                    flags = _nonzero_flags(values[group * words_per_8 + offset], magnitude, high, sign)
                    columns[group * words_per_8 + offset] |= flags
                    if offset < words_per_group:
                        first_half += _lanes_set(flags, ones, lane_shift, sum_shift)
                    else:
                        second_half += _lanes_set(flags, ones, lane_shift, sum_shift)
                count += first_half + second_half
                complying_4 += np.uint64(first_half <= two) + np.uint64(second_half <= two)
                complying_8 += np.uint64(first_half + second_half <= four)
            # a row that ends in half a group of 8: its last group of 4 (if its rows split into those)
            tail, tail_words = np.uint64(0), per_row % words_per_8
            for word in range(per_row - tail_words, per_row):
                flags = _nonzero_flags(values[word], magnitude, high, sign)
                columns[word] |= flags
                tail += _lanes_set(flags, ones, lane_shift, sum_shift)
            row_counts[row] = np.int64(count + tail)
            if tail_words:
                complying_4 += np.uint64(tail <= two)
            compliant_4[row] = np.int64(complying_4)
            compliant_8[row] = np.int64(complying_8)

    return _jit(count_words)


class Kernel:
    """The compiled counting loops: one per group layout, each compiled on first use (or loaded from
    numba's cache) for the word type and memory layout it meets."""

    def __init__(self):
        # words per group of 4 -> its loop (made here, compiled on first call: threads share them)
        self._counters = {words: _make_counter(words) for words in (1, 2, 4)}

    def count(self, values, signed_float: bool, per_row_groups: bool = False):
        """scan.count_block's result for `values` (rows x width, unsigned integers of the element's
        size), or None when its rows cannot be read as whole words (columns not contiguous, a row not
        a whole number of words, no rows): scan.count_block counts those with numpy."""
        rows, width = values.shape
        item = values.itemsize
        word_bytes = WORD_BYTES[item]
        if rows == 0 or values.strides[1] != item or (width * item) % word_bytes:
            return None
        word = np.dtype(f"uint{8 * word_bytes}")
        words = values.view(word)  # the same bytes; rows keep their stride
        # read-only, as memory-mapped chunks are: one compiled loop serves tests, benchmarks and scans
        words.flags.writeable = False
        lane_bits, lanes = 8 * item, word_bytes // item
        repeated = lambda lane: word.type(sum(lane << (lane_bits * k) for k in range(lanes)))  # noqa: E731
        high = repeated(1 << (lane_bits - 1))
        counter = self._counters[max(1, 4 // lanes)]
        row_counts, compliant_4, compliant_8 = (np.empty(rows, dtype=np.int64) for _ in range(3))
        columns = np.zeros(words.shape[1], dtype=word)
        counter(words, repeated((1 << (lane_bits - 1)) - 1), high, word.type(0) if signed_float else high,
                repeated(1), word.type(lane_bits - 1), word.type(8 * word_bytes - lane_bits), row_counts,
                compliant_4, compliant_8, columns)
        groups = {pattern: per_row if per_row_groups else int(per_row.sum())
                  for pattern, per_row, size in (("2:4", compliant_4, 4), ("4:8", compliant_8, 8))
                  if width % size == 0}
        return int(row_counts.sum()), groups, row_counts, columns.view(LANE[item]) != 0
