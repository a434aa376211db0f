"""Stage 4 with --sparsity: read every tensor's bytes and count what pruning left in them.

Per tensor: nonzero values (a float is zero when its bits without the sign are zero, so -0.0 is
zero, in every float dtype), N:M compliance (2:4 and 4:8: at least N zeros in every group of M
consecutive input weights of a row), and for matrices which output rows and input columns are
entirely zero. Bytes are read through a memory map of each file, a bounded chunk at a time, on all
cores (the counting releases the GIL), each chunk's pages unmapped once counted: memory stays within
chunk size x workers whatever the model's size. Each chunk is counted in one compiled pass (scan_kernel, numba) where numba is installed and
the scan is big enough to repay loading it, else with numpy: the same numbers either way.
With --device cuda the same counts run on the GPU (torch), reading overlapped with counting.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

from ..tensors import FLOAT_DTYPES, CheckpointError, TensorInfo
from ..records import Record

CHUNK_BYTES = 4 << 20  # small enough to stay in cache while numpy's several passes run over a chunk
# The compiled kernel is loaded for a model of this many bytes: importing numba and loading the kernel
# from numba's cache costs 0.35 s (1-2 s compiling it, the first time on a machine, or with numba's
# files out of the page cache), and it saves 0.05-0.09 s per GB on 2 cores (benchmarks/bench_scan.py).
# Once loaded it counts every model that follows in the process.
KERNEL_MIN_BYTES = 4 << 30
UNSIGNED = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}
PATTERNS = ((2, 4), (4, 8))  # N:M patterns checked: at least N zeros in every M consecutive inputs


class TensorContents(Record):
    """What one tensor's bytes hold."""

    name: str
    numel: int
    nonzero: int
    # "2:4" -> (groups with at least 2 zeros, all groups); only for matrices whose rows split into groups.
    nm_groups: dict
    row_nonzero: object = None  # numpy array: nonzero count per output row (matrices only)
    column_nonzero: object = None  # numpy bool array: any nonzero per input column (matrices only)
    # "2:4" -> numpy array: per output row, its groups with at least 2 zeros (to split fused projections).
    row_compliant: dict = {}
    shape: tuple = ()

    @property
    def zero_rows(self) -> int | None:
        return None if self.row_nonzero is None else int((self.row_nonzero == 0).sum())

    @property
    def zero_columns(self) -> int | None:
        return None if self.column_nonzero is None else int((~self.column_nonzero).sum())


def choose_device(requested: str) -> str:
    """'cuda' when asked for or when `auto` finds torch with CUDA; else 'cpu' (numpy)."""
    if requested == "cpu":
        return "cpu"
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        if requested == "cuda":
            raise CheckpointError("--device cuda", "torch is not installed", "pip install torch, or use --device cpu")
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise CheckpointError("--device cuda", "torch sees no CUDA device", "use --device cpu")
    return "cpu"


def scan_tensors(tensors: list[TensorInfo], device: str = "cpu", workers: int | None = None,
                 progress=None, engine: str | None = None, per_row_groups=frozenset()) -> dict[str, TensorContents]:
    """Contents of every tensor, keyed by name. `progress(bytes)` is called as bytes are counted.
    The engine is torch on CUDA devices; on the CPU "numba" (the compiled kernel) or "numpy", chosen by
    the scan's size when not given (tests run the torch engine on the CPU too). Tensors named in
    `per_row_groups` get their N:M groups counted per row (fused projections, which are split into
    parts by rows afterwards)."""
    packed = next((tensor for tensor in tensors if tensor.nbytes is not None), None)
    if packed is not None:  # block-quantized (GGUF Q4_K, ...): bytes are not elements
        raise CheckpointError(packed.file, f"--sparsity cannot count the values of {packed.dtype} tensors ({packed.name})",
                              "scan the unquantized model")
    jobs = plan_chunks(tensors, per_row_groups)
    counters = {tensor.name: TensorCounter(tensor) for tensor in tensors}
    engine = engine or choose_engine(device, sum(tensor.numel * tensor.itemsize for tensor in tensors))
    if engine == "torch":
        from .scan_torch import count_chunks_torch

        _add_results(counters, count_chunks_torch(jobs, chunk_layout, device), progress)
    else:
        kernel = compiled_kernel() if engine == "numba" else None
        with mapped_files(jobs) as maps, ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            _add_results(counters, pool.map(functools.partial(count_chunk, maps=maps, kernel=kernel), jobs), progress)
    return {name: counter.freeze() for name, counter in counters.items()}


def count_rows(tensor: TensorInfo, values, per_row_groups: bool = False) -> TensorContents:
    """Contents of a 2-D tensor given as an array in memory (a quantized weight's nonzero mask, in the
    dense layout), counted block by block as the files' tensors are."""
    rows, width = values.shape
    step = max(1, CHUNK_BYTES // max(1, width * values.itemsize))
    blocks = ((start, values[start:start + step]) for start in range(0, rows, step))
    return contents_of_blocks(tensor, ((start, block.shape[0], count_block(
        block.view("u1") if block.dtype == bool else block, False, per_row_groups)) for start, block in blocks))


def contents_of_blocks(tensor: TensorInfo, results) -> TensorContents:
    """Contents of a 2-D tensor from its row blocks' counts: (first row, rows, count_block's result)."""
    counter = TensorCounter(tensor)
    for start, rows, result in results:
        counter.add(start, rows, result)
    return counter.freeze()


def _add_results(counters: dict, results, progress) -> None:
    for tensor, start_row, rows, result in results:
        counters[tensor.name].add(start_row, rows, result)
        if progress:
            progress(rows * row_bytes(tensor))


def choose_engine(device: str, scan_bytes: int) -> str:
    """"torch" off the CPU; else "numba" where numba imports, for a scan big enough to repay loading
    the kernel or once it is loaded; else "numpy" (the same numbers)."""
    if device != "cpu":
        return "torch"
    if scan_bytes < KERNEL_MIN_BYTES and not compiled_kernel.cache_info().currsize:
        return "numpy"
    return "numpy" if compiled_kernel() is None else "numba"


@functools.lru_cache(maxsize=1)
def compiled_kernel():
    """scan_kernel.Kernel, made once per process (numba's compiled code is per process anyway);
    None where numba is not installed or cannot be imported on this Python."""
    try:
        from .scan_kernel import Kernel
    except ImportError:
        return None
    return Kernel()


# -- chunking --------------------------------------------------------------------------------


def _rows_and_width(tensor: TensorInfo) -> tuple[int, int]:
    """Treat every tensor as rows x width: matrices as they are, vectors as one row, more dims flattened."""
    if len(tensor.shape) == 0:
        return 1, 1
    if len(tensor.shape) == 1:
        return 1, tensor.shape[0]
    width = tensor.shape[-1]
    return (tensor.numel // width if width else 0), width


def row_bytes(tensor: TensorInfo) -> int:
    return _rows_and_width(tensor)[1] * tensor.itemsize


def plan_chunks(tensors: list[TensorInfo], per_row_groups=frozenset()) -> list[tuple]:
    """Every tensor cut into chunks of whole rows: (tensor, start row, rows, groups per row?)."""
    return [job + (tensor.name in per_row_groups,) for tensor in tensors for job in _chunks(tensor)]


def _chunks(tensor: TensorInfo):
    rows, width = _rows_and_width(tensor)
    if rows == 0 or width == 0:
        return []
    if len(tensor.shape) == 1:
        return [(tensor, 0, 1)]  # vectors (norms, biases) are small: one chunk
    step = max(1, CHUNK_BYTES // max(1, width * tensor.itemsize))
    return [(tensor, start, min(step, rows - start)) for start in range(0, rows, step)]


def chunk_layout(tensor: TensorInfo, start_row: int, rows: int):
    """(file offset to map from, byte length, element offset inside the map, element strides)."""
    _, width = _rows_and_width(tensor)
    item = tensor.itemsize
    if tensor.stride is None or tuple(tensor.stride) == _contiguous_strides(tensor.shape):
        row_stride, column_stride = width, 1
    else:
        if len(tensor.stride) > 2 and any(size != 1 for size in tensor.shape[:-2]):
            raise CheckpointError(tensor.file, f"{tensor.name}: strided tensors of more than 2 dimensions",
                                  "not supported by the content scan")
        row_stride = tensor.stride[-2] if len(tensor.stride) >= 2 else width
        column_stride = tensor.stride[-1]
        if 0 in (row_stride, column_stride) and tensor.numel > 1:
            raise CheckpointError(tensor.file, f"{tensor.name}: an expanded (stride 0) view",
                                  "parameters are never saved that way; the file is corrupt or hostile")
    first = tensor.offset + start_row * row_stride * item
    span = ((rows - 1) * row_stride + (width - 1) * column_stride + 1) * item
    return first, span, (row_stride, column_stride)


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@contextlib.contextmanager
def mapped_files(jobs):
    """Read-only maps of the whole files that `jobs` (plan_chunks) lie in, for the length of a scan.
    One map per file, not per chunk: every map and unmap takes the process's address-space lock, which
    the counting threads' page faults wait on (about a tenth of the scan's time on 2 cores)."""
    maps: dict[str, mmap.mmap] = {}
    try:
        for tensor, *_ in jobs:
            if tensor.file not in maps:
                try:
                    with open(tensor.file, "rb") as handle:
                        maps[tensor.file] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError) as error:  # ValueError: an empty file
                    raise CheckpointError(tensor.file, f"cannot read: {error}", "is the file truncated?") from None
        yield maps
    finally:
        for mapped in maps.values():
            mapped.close()


def count_chunk(job, maps: dict, kernel=None):
    """(tensor, start row, rows, count_block's result) for one planned chunk, read from `maps`
    (mapped_files). Its pages leave the process once counted: resident memory stays bounded by the
    chunks in flight, whatever the model's size."""
    tensor, start_row, rows, per_row_groups = job
    import numpy as np

    mapped = maps[tensor.file]
    first, span, (row_stride, column_stride) = chunk_layout(tensor, start_row, rows)
    if first + span > len(mapped):
        raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read in full",
                              "re-save or re-download it")
    item = tensor.itemsize
    _, width = _rows_and_width(tensor)
    values = np.ndarray((rows, width), dtype=np.dtype(UNSIGNED[item]), buffer=mapped, offset=first,
                        strides=(row_stride * item, column_stride * item))
    try:
        result = count_block(values, tensor.dtype in FLOAT_DTYPES, per_row_groups, kernel)
    finally:
        del values  # the map can only close once no array looks into it
    if hasattr(mapped, "madvise"):  # not on Windows, where the pages stay mapped until the scan ends
        page_start = first - first % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, page_start, first + span - page_start)
    return tensor, start_row, rows, result


def count_block(values, signed_float: bool, per_row_groups: bool = False, kernel=None):
    """(nonzero, {pattern: compliant groups}, row nonzero counts, column any-nonzero) of a rows x width
    block; with `per_row_groups`, the compliant groups come per row (a numpy array). With `kernel`
    (compiled_kernel()), counted in its one pass where the block's layout allows, else with numpy."""
    if kernel is not None:
        result = kernel.count(values, signed_float, per_row_groups)
        if result is not None:
            return result
    return _count_block_numpy(values, signed_float, per_row_groups)


def _count_block_numpy(values, signed_float: bool, per_row_groups: bool):
    """count_block in numpy: about eight passes over the block, each allocating (numpy < 2 too)."""
    import numpy as np

    if signed_float:
        shifted = np.left_shift(values, 1)  # drops the sign bit: -0.0 becomes 0
        nonzero_mask = np.not_equal(shifted, 0, out=np.empty(values.shape, dtype=bool))
        del shifted
    else:
        nonzero_mask = np.not_equal(values, 0)
    rows, width = values.shape
    count = int(np.count_nonzero(nonzero_mask))
    if count == 0 or count == nonzero_mask.size:
        # Dense and empty blocks (the common cases) are decided without looking further.
        dense = count != 0
        groups = {f"{n}:{m}": np.full(rows, 0 if dense else width // m, dtype=np.int64) if per_row_groups
                  else (0 if dense else rows * (width // m)) for n, m in PATTERNS if width % m == 0}
        row_counts = np.full(rows, width if dense else 0, dtype=np.int64)
        columns = np.full(width, dense, dtype=bool)
        return count, groups, row_counts, columns
    groups = {}
    if width % 8 == 0 and hasattr(np, "bitwise_count"):  # numpy >= 2
        # Pack the mask to bits (8 consecutive inputs per byte, first input in the lowest bit) and count
        # set bits per byte and per nibble: an eighth of the data to touch.
        packed = np.packbits(nonzero_mask, axis=1, bitorder="little")
        per8 = np.bitwise_count(packed)
        low4 = np.bitwise_count(packed & np.uint8(0x0F))
        over = {"2:4": (low4 > 2, (per8 - low4) > 2), "4:8": (per8 > 4,)}
        for pattern, masks in over.items():
            groups[pattern] = _compliant(masks, width // int(pattern.split(":")[1]), rows, per_row_groups)
        row_counts = per8.sum(axis=1, dtype=np.int64)
        columns = np.unpackbits(np.bitwise_or.reduce(packed, axis=0), bitorder="little")[:width].astype(bool)
        return count, groups, row_counts, columns
    row_counts = None
    if width % 4 == 0:
        # Nonzeros per group of 4 bools at once: a uint32 times 0x01010101 sums its bytes in the top byte.
        per4 = nonzero_mask.view(np.uint32)
        per4 = np.multiply(per4, np.uint32(0x01010101))
        np.right_shift(per4, 24, out=per4)
        groups["2:4"] = _compliant((per4 > 2,), width // 4, rows, per_row_groups)
        if width % 8 == 0:
            per8 = per4[:, 0::2] + per4[:, 1::2]
            groups["4:8"] = _compliant((per8 > 4,), width // 8, rows, per_row_groups)
        row_counts = per4.sum(axis=1, dtype=np.int64)
    if row_counts is None:
        row_counts = nonzero_mask.sum(axis=1, dtype=np.int64)
    columns = np.logical_or.reduce(nonzero_mask, axis=0)
    return count, groups, row_counts, columns


def _compliant(breaking_masks, groups_per_row: int, rows: int, per_row: bool):
    """Groups that comply, from masks of the groups that break the pattern: per row or in total."""
    import numpy as np

    if per_row:
        return groups_per_row - sum(np.count_nonzero(mask, axis=1) for mask in breaking_masks)
    return rows * groups_per_row - sum(int(np.count_nonzero(mask)) for mask in breaking_masks)


class TensorCounter:
    """Accumulates one tensor's chunk results (chunks arrive in any order)."""

    def __init__(self, tensor: TensorInfo):
        self.tensor = tensor
        self.nonzero = 0
        self.groups: dict = {}  # pattern -> per-row compliant groups (when asked for)
        self.totals: dict = {}  # pattern -> compliant groups
        self.rows = self.columns = None

    def add(self, start_row: int, rows: int, result) -> None:
        import numpy as np

        nonzero, groups, row_counts, columns = result
        self.nonzero += nonzero
        if len(self.tensor.shape) < 2:
            return  # vectors: only their nonzeros matter; stacked experts [E, rows, width] are rows too
        total_rows, width = _rows_and_width(self.tensor)
        if self.rows is None:
            self.rows = np.zeros(total_rows, dtype=np.int64)
            self.columns = np.zeros(width, dtype=bool)
        self.rows[start_row:start_row + rows] = row_counts
        self.columns |= columns
        for pattern, compliant in groups.items():
            if isinstance(compliant, int):
                self.totals[pattern] = self.totals.get(pattern, 0) + compliant
            else:
                self.groups.setdefault(pattern, np.zeros(total_rows, dtype=np.int64))[start_row:start_row + rows] = \
                    compliant

    def freeze(self) -> TensorContents:
        total_rows, width = _rows_and_width(self.tensor)
        totals = {**self.totals, **{pattern: int(per_row.sum()) for pattern, per_row in self.groups.items()}}
        groups = {pattern: (compliant, total_rows * (width // int(pattern.split(":")[1])))
                  for pattern, compliant in totals.items()}
        return TensorContents(self.tensor.name, self.tensor.numel, self.nonzero, groups, self.rows, self.columns,
                              dict(self.groups), tuple(self.tensor.shape))


# -- from tensor contents to the model's structure ---------------------------------------------


def apply_contents(structure, contents: dict[str, TensorContents]):
    """The structure with nonzero counts, N:M patterns and structured zeros per projection, layer and model."""
    from ..families.base import ATTENTION_BUCKETS, MLP_BUCKETS
    from ..interpret.structure import LayerContents, ModelContents

    layers = []
    compliant_model = {pattern: True for pattern in ("2:4", "4:8")}
    for layer in structure.layers:
        nonzero = {"attention": 0, "mlp": 0}
        per_projection: dict[str, int] = {}
        weights: dict[str, TensorContents] = {}
        layer_names = [name for name in layer.tensor_roles if name in contents]
        weight_names = {}
        for name in layer_names:
            bucket, role = layer.tensor_roles[name]
            part = "attention" if bucket in ATTENTION_BUCKETS else "mlp" if bucket in MLP_BUCKETS else None
            if part:
                nonzero[part] += contents[name].nonzero
            if bucket in ("attention", "mlp"):
                per_projection[role] = per_projection.get(role, 0) + contents[name].nonzero
                if name.endswith(".weight") and contents[name].row_nonzero is not None:
                    weights[role] = _as_out_in(contents[name]) if name in layer.transposed else contents[name]
                    weight_names[role] = name
        _split_fused_nonzero(layer, weights, weight_names, per_projection)
        nm = {pattern: bool(weights) and all(_complies(c, pattern) for c in weights.values())
              for pattern in ("2:4", "4:8")}
        for pattern in nm:
            compliant_model[pattern] = compliant_model[pattern] and nm[pattern]
        layer_contents = LayerContents(
            nonzero=sum(contents[name].nonzero for name in layer_names),
            attention_nonzero=nonzero["attention"],
            mlp_nonzero=nonzero["mlp"],
            projection_nonzero={role: per_projection.get(role) for role in _projection_roles(layer)},
            projection_nm={role: {p: round(a / b, 6) for p, (a, b) in c.nm_groups.items() if b}
                           for role, c in weights.items()},
            projection_zero_rows={role: c.zero_rows for role, c in weights.items()},
            projection_zero_columns={role: c.zero_columns for role, c in weights.items()},
            nm_sparsity="2:4" if nm["2:4"] else "4:8" if nm["4:8"] else None,
            **_effective_sizes(layer, weights, structure.head_dim),
            **_per_expert(layer.expert_tensors, contents),
        )
        layers.append(layer.replace(contents=layer_contents))
    nonzero_params = sum(c.nonzero for c in contents.values())
    model_contents = ModelContents(
        nonzero_params=nonzero_params,
        sparsity=1 - nonzero_params / structure.total_params if structure.total_params else 0.0,
        nm_sparsity="2:4" if compliant_model["2:4"] else "4:8" if compliant_model["4:8"] else None,
        tensors=tuple({"name": c.name, "numel": c.numel, "nonzero": c.nonzero} for c in contents.values()),
    )
    return structure.replace(layers=tuple(layers), contents=model_contents)


def _as_out_in(contents: TensorContents) -> TensorContents:
    """A weight stored [in, out] (GPT-2's Conv1D) seen as [out, in]: which outputs and inputs are all zero.
    Its N:M groups run along the outputs, not the inputs, so they are not counted as N:M sparsity."""
    return TensorContents(contents.name, contents.numel, contents.nonzero, {},
                          contents.column_nonzero.astype("int64"), contents.row_nonzero > 0, {}, contents.shape[::-1])


def _per_expert(expert_tensors: dict, contents: dict) -> dict:
    """Nonzero values and N:M shares of each routed expert: per-expert tensors by their number, stacked
    tensors [E, ...] by slicing their per-row counts into E equal parts."""
    nonzero: dict[int, int] = {}
    groups: dict[int, dict[str, list[int]]] = {}

    def add(expert, count, pattern_groups):
        nonzero[expert] = nonzero.get(expert, 0) + count
        for pattern, (compliant, total) in pattern_groups.items():
            tally = groups.setdefault(expert, {}).setdefault(pattern, [0, 0])
            tally[0] += compliant
            tally[1] += total

    for name, number in expert_tensors.items():
        tensor = contents.get(name)
        if tensor is None:
            continue
        if number is not None:
            add(number, tensor.nonzero, tensor.nm_groups)
            continue
        if tensor.row_nonzero is None:
            return {}
        experts = tensor.shape[0]
        rows = tensor.row_nonzero.reshape(experts, -1)
        for expert in range(experts):
            per_pattern = {}
            for pattern, per_row in tensor.row_compliant.items():
                _, total = tensor.nm_groups[pattern]
                per_pattern[pattern] = (int(per_row.reshape(experts, -1)[expert].sum()), total // experts)
            add(expert, int(rows[expert].sum()), per_pattern)
    order = sorted(nonzero)
    return {"expert_nonzero": tuple(nonzero[e] for e in order),
            "expert_nm": tuple({p: round(a / b, 6) for p, (a, b) in groups.get(e, {}).items() if b} for e in order)}


def _projection_roles(layer):
    roles = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    if layer.mlp.gate_proj is not None:
        roles.insert(4, "gate_proj")
    return roles


def _complies(contents: TensorContents, pattern: str) -> bool:
    compliant, total = contents.nm_groups.get(pattern, (0, -1))
    return compliant == total


def _split_fused_nonzero(layer, weights: dict, weight_names: dict, per_projection: dict) -> None:
    """Fused qkv_proj / gate_up_proj (Phi-3, GPT-NeoX, Falcon, Bloom): nonzeros, N:M groups and zero
    rows per part, from the per-row counts, divided where stage 3 divided the rows; a part may own
    several interleaved ranges (one per head or KV group), taken in order. Input columns are shared by
    the parts, so zero columns stay with the fused weight; a fused bias is not split."""
    import numpy as np

    parts = {role: layer.fused_rows[name] for role, name in weight_names.items() if name in layer.fused_rows}
    for fused, pieces in parts.items():
        whole = weights.pop(fused)
        per_projection.pop(fused, None)
        width_groups = {pattern: total // max(1, len(whole.row_nonzero)) for pattern, (_, total) in whole.nm_groups.items()}
        rows_of: dict[str, list[int]] = {}
        for role, start, end in pieces:
            rows_of.setdefault(role, []).extend(range(start, end))
        for role, rows in rows_of.items():
            index = np.asarray(rows, dtype=np.int64)
            row_nonzero = whole.row_nonzero[index]
            groups = {pattern: (int(per_row[index].sum()), len(rows) * width_groups[pattern])
                      for pattern, per_row in whole.row_compliant.items()}
            per_projection[role] = int(row_nonzero.sum())
            weights[role] = TensorContents(role, 0, per_projection[role], groups, row_nonzero, None)


def _effective_sizes(layer, weights: dict, head_dim: int | None) -> dict:
    """Heads and MLP channels left once those zeroed in place (soft structured pruning) are discounted."""
    def blocks_alive(mask, size):
        if mask is None or size is None or size <= 0 or len(mask) % size:
            return None
        return mask.reshape(-1, size).any(axis=1)

    def rows_alive(role):
        contents = weights.get(role)
        return None if contents is None else contents.row_nonzero > 0

    def columns_alive(role):
        contents = weights.get(role)
        return None if contents is None else contents.column_nonzero

    def either(*masks):
        known = [mask for mask in masks if mask is not None]
        if not known or any(len(mask) != len(known[0]) for mask in known):
            return None
        alive = known[0].copy()
        for mask in known[1:]:
            alive |= mask
        return alive

    heads = either(blocks_alive(rows_alive("q_proj"), head_dim), blocks_alive(columns_alive("o_proj"), head_dim))
    kv_heads = either(blocks_alive(rows_alive("k_proj"), head_dim), blocks_alive(rows_alive("v_proj"), head_dim))
    channels = either(rows_alive("gate_proj"), rows_alive("up_proj"), columns_alive("down_proj"))
    return {"effective_heads": None if heads is None else int(heads.sum()),
            "effective_kv_heads": None if kv_heads is None else int(kv_heads.sum()),
            "effective_intermediate_size": None if channels is None else int(channels.sum())}
