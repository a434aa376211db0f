"""The content scan cut into units of work for other processes or machines (--executor ray).

A unit is a run of the scan's chunks (scan.plan_chunks) that lie one after another in one file:
about UNIT_BYTES of it, or the whole file when it holds up to WHOLE_FILE_BYTES. Big enough that a
cluster's cost per task (milliseconds) vanishes, small enough that one 8B model (16 GB) keeps 16
workers busy. Units are sorted by (model, file, offset), so each reads its file front to back.

A unit's chunks are counted where it runs and folded per tensor before they travel back: one nonzero
sum, the row counts of the rows it covered, one column OR, the N:M group counts. That is 8 bytes per
row of 4,096 bf16 weights (8 KB) and a bit per column: a fraction of a percent of the bytes read.
The driver merges the units in plan order, whatever order they finished in; the counts are integers
and the row counts land in their own rows, so the result is the local scan's, bit for bit.
"""

from __future__ import annotations

from ..records import Record
from .scan import TensorCounter, chunk_layout, count_chunk, mapped_files, plan_chunks, row_bytes
from ..tensors import TensorInfo

UNIT_BYTES = 1 << 30
WHOLE_FILE_BYTES = 2 << 30


class ScanUnit(Record):
    """A contiguous byte range of one file, and the chunks of tensors that lie in it."""

    number: int  # its place in the plan: results are merged in this order
    model: str
    file: str
    start: int  # bytes [start, end) of `file`
    end: int
    chunks: tuple  # scan.plan_chunks entries, in file order
    tensor_bytes: int  # bytes of tensor data it counts (what the progress bar counts)


class TensorPart(Record):
    """Rows [start_row, start_row + rows) of one tensor, as counted by one unit."""

    name: str
    start_row: int
    rows: int
    result: tuple  # scan.count_block's result over those rows


def plan_units(tensors: list[TensorInfo], per_row_groups=frozenset(), model: str = "",
               unit_bytes: int = UNIT_BYTES, whole_file_bytes: int = WHOLE_FILE_BYTES) -> list[ScanUnit]:
    """The scan of `tensors` (one model's) as units sorted by (file, offset)."""
    located = []  # (file, first byte, end byte, plan position, chunk)
    for position, chunk in enumerate(plan_chunks(tensors, per_row_groups)):
        tensor, start_row, rows, _ = chunk
        first, span, _ = chunk_layout(tensor, start_row, rows)
        located.append((tensor.file, first, first + span, position, chunk))
    located.sort(key=lambda entry: entry[:2] + (entry[3],))
    by_file: dict[str, list] = {}
    for entry in located:
        by_file.setdefault(entry[0], []).append(entry)
    units = []
    for file, entries in by_file.items():
        size = max(end for _, _, end, _, _ in entries) - entries[0][1]
        limit = size if size <= whole_file_bytes else unit_bytes
        run: list = []
        for entry in entries:
            run.append(entry)
            if run[-1][2] - run[0][1] >= limit or entry is entries[-1]:
                units.append(_unit(len(units), model, file, run))
                run = []
    return units


def _unit(number: int, model: str, file: str, run: list) -> ScanUnit:
    chunks = tuple(entry[4] for entry in run)
    return ScanUnit(number, model, file, run[0][1], max(entry[2] for entry in run), chunks,
                    sum(rows * row_bytes(tensor) for tensor, _, rows, _ in chunks))


def count_unit(unit: ScanUnit, kernel=None) -> list[TensorPart]:
    """Count a unit's chunks one after another and fold them per tensor (see the module's docstring)."""
    blocks: dict[str, list] = {}  # tensor name -> [(start row, rows, result)], consecutive rows
    with mapped_files(unit.chunks) as maps:
        for chunk in unit.chunks:
            tensor, start_row, rows, result = count_chunk(chunk, maps, kernel)
            blocks.setdefault(tensor.name, []).append((start_row, rows, result))
    return [TensorPart(name, parts[0][0], sum(rows for _, rows, _ in parts), _fold(parts))
            for name, parts in blocks.items()]


def _fold(parts: list) -> tuple:
    """One count_block result for consecutive row blocks of one tensor."""
    import numpy as np

    for (start, rows, _), (following, _, _) in zip(parts, parts[1:]):
        if following != start + rows:
            raise AssertionError(f"unit chunks not consecutive: rows {start}+{rows}, then {following}")
    results = [result for _, _, result in parts]
    if len(results) == 1:
        return results[0]
    groups = {}
    for pattern, first in results[0][1].items():
        each = [result[1][pattern] for result in results]
        groups[pattern] = sum(each) if isinstance(first, int) else np.concatenate(each)
    return (sum(result[0] for result in results), groups, np.concatenate([result[2] for result in results]),
            np.logical_or.reduce([result[3] for result in results]))


def merge_units(tensors: list[TensorInfo], units: list[ScanUnit], results: dict[int, list[TensorPart]]) -> dict:
    """scan.scan_tensors' answer from every unit's parts (`results` keyed by unit number)."""
    counters = {tensor.name: TensorCounter(tensor) for tensor in tensors}
    for unit in units:  # plan order, whatever order they finished in
        for part in results[unit.number]:
            counters[part.name].add(part.start_row, part.rows, part.result)
    return {name: counter.freeze() for name, counter in counters.items()}
