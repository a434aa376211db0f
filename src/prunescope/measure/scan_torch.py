"""The content scan on a GPU (`--device cuda`): the same counts as scan.count_block, in torch.

Chunks are read from disk into pinned host buffers by a reader thread while the GPU counts the
previous chunk, so reading and counting overlap. Only imported when torch is asked for.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..tensors import FLOAT_DTYPES

SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# All bits but the sign: a float is zero when these are zero (-0.0 included).
MAGNITUDE = {1: 0x7F, 2: 0x7FFF, 4: 0x7FFFFFFF, 8: 0x7FFFFFFFFFFFFFFF}


def count_chunks_torch(jobs, layout, device: str = "cuda"):
    """Yield (tensor, start_row, rows, result) per job, result as scan.count_block returns it."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(_read, jobs[0], layout, device)
        for number, job in enumerate(jobs):
            host = pending.result()
            if number + 1 < len(jobs):
                pending = reader.submit(_read, jobs[number + 1], layout, device)  # read ahead
            tensor, start_row, rows, per_row_groups = job
            yield tensor, start_row, rows, _count(tensor, rows, host, device, per_row_groups)


def _read(job, layout, device):
    tensor, start_row, rows, _ = job
    first, span, strides = layout(tensor, start_row, rows)
    buffer = torch.empty(span, dtype=torch.uint8, pin_memory=device.startswith("cuda"))
    with open(tensor.file, "rb") as handle:
        got = os.preadv(handle.fileno(), [buffer.numpy()], first)
    if got != span:
        from ..tensors import CheckpointError

        raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read in full", "re-save it")
    return buffer, strides


def _count(tensor, rows, host, device, per_row_groups):
    buffer, (row_stride, column_stride) = host
    item = tensor.itemsize
    width = tensor.shape[-1] if tensor.shape else 1
    values = buffer.to(device, non_blocking=True).view(SIGNED[item])
    values = values.as_strided((rows, width), (row_stride, column_stride))
    if tensor.dtype in FLOAT_DTYPES:
        nonzero_mask = (values & MAGNITUDE[item]) != 0
    else:
        nonzero_mask = values != 0
    count = int(nonzero_mask.sum())
    groups = {}
    for zeros, size in ((2, 4), (4, 8)):
        if width % size == 0:
            per_group = nonzero_mask.view(rows, width // size, size).sum(dim=-1)
            complying = per_group <= size - zeros
            groups[f"{zeros}:{size}"] = complying.sum(dim=1).cpu().numpy().astype(np.int64) if per_row_groups \
                else int(complying.sum())
    row_counts = nonzero_mask.sum(dim=1).cpu().numpy().astype(np.int64)
    columns = nonzero_mask.any(dim=0).cpu().numpy()
    return count, groups, row_counts, columns
