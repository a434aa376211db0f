"""Stage 2.5: quantized and compressed checkpoints, seen as the dense model they encode.

A quantized weight is stored as codes plus what decodes them (scales, zero points, group indexes,
shapes, bitmasks, quant states). `decode_quantization` replaces each such weight in the tensor index
by one tensor with the weight's logical (dense) shape, drops the decoding tensors from the parameter
list, and describes the encoding in a `Quantization` record; the interpreter then runs unchanged on
the logical index. Each format lives in its own module; the layouts are in shared/notes/quantized.md.
Only a few small tensors are read here (logical shapes, quant states); never the weights.
"""

from __future__ import annotations

import json
import os

from ..records import Record
from ..tensors import DTYPE_SIZES, CheckpointError, TensorIndex, TensorInfo


class Encoded(Record):
    """How one logical weight's values are stored."""

    logical: TensorInfo  # the weight as the dense model has it: name, shape, dtype
    scheme: str  # one of SCHEMES: says how `data` holds the values
    data: TensorInfo  # the stored codes (or values)
    bits: int
    parts: dict = {}  # what decodes the codes: "scale", "zero_point", "g_idx", "bitmask", "quant_map", ...
    group_size: int | None = None  # input channels per scale (None: one scale per output row or tensor)
    zero_offset: int = 0  # added to stored zero points (GPTQ v1 stores zero - 1)

    @property
    def symmetric(self) -> bool:
        return "zero_point" not in self.parts


# How the measure stage reads each scheme (measure/scan_quantized.py):
PLAIN = "plain"  # the codes are the weight in its logical layout (fp8, symmetric int8): read as a dense tensor
PACKED_ROWS = "packed-rows"  # compressed-tensors pack-quantized: int32 words along each row, LSB first
GPTQ = "gptq"  # int32 words along the input dimension of W^T, zero points packed along outputs
AWQ = "awq"  # int32 words along the outputs of W^T, AWQ's interleaved nibble order
AWQ_GEMV = "awq-gemv"  # int32 words along each row (in order); zero points packed along each row's groups
BNB4 = "bnb-4bit"  # flat 4-bit codes into a 16-entry table, first element in the high nibble
BITMASK = "bitmask"  # compressed-tensors sparse-bitmask: nonzero values + a bitmask of nonzeros
BITMASK_24 = "bitmask-2:4"  # compressed-tensors sparse-24-bitmask: 2 kept values of every 4 + a bitmask
INT_ZERO_POINT = "int-zero-point"  # int8 codes with per-channel zero points (asymmetric int-quantized)
SCHEMES = (PLAIN, PACKED_ROWS, GPTQ, AWQ, AWQ_GEMV, BNB4, BITMASK, BITMASK_24, INT_ZERO_POINT)


class Quantization(Record):
    """What a quantized checkpoint's encoding is and what it costs (model_structure.json `quantization`)."""

    method: str  # "compressed-tensors", "gptq", "awq", "bitsandbytes", "fp8"
    format: str  # e.g. "pack-quantized", "float-quantized", "sparse-24-bitmask", "gptq v1", "awq gemm", "nf4"
    bits: int | list | None = None  # weight bits (a list when modules differ)
    group_size: int | list | None = None  # None: per output channel (or per tensor / block)
    symmetric: bool | None = None
    act_order: str | bool | None = None
    activation_scheme: str | None = None  # e.g. "float8 dynamic token"; None: weight-only
    sparsity_format: str | None = None  # "sparse-bitmask", "sparse-24-bitmask"
    sparsity_structure: str | None = None  # "2:4", "unstructured"
    unquantized_modules: tuple[str, ...] = ()  # matrices stored as plain values (embeddings, lm_head, ignored)
    quantized_params: int = 0  # logical parameters of the encoded weights
    params_by_storage: dict = {}  # "int4" / "F8_E4M3" / "BF16" ... -> logical parameters stored that way
    storage_bytes: int = 0  # tensor data bytes in the files
    storage_bytes_by_dtype: dict = {}
    bits_per_param: float | None = None  # storage_bytes * 8 / total parameters
    overhead_elements: int = 0  # scales, zero points, g_idx, shapes, bitmasks, quant states
    overhead_bytes: int = 0
    config_version: str | None = None  # the library version the config names
    notes: tuple[str, ...] = ()


def decode_quantization(index: TensorIndex, config: dict | None) -> TensorIndex:
    """The logical index of a quantized checkpoint (`index.quantization` set, `index.encoded` filled),
    or the index unchanged when nothing is quantized. Raises CheckpointError, one line naming the
    format, for encodings prunescope cannot decode."""
    quant_config, source = _quantization_config(index, config or {})
    method = _method(quant_config, index)
    if method is None:
        return index
    if method == "compressed-tensors":
        from .compressed_tensors import decode
    elif method == "gptq":
        from .gptq import decode
    elif method == "awq":
        from .awq import decode
    elif method == "bitsandbytes":
        from .bnb import decode
    elif method == "fp8":
        from .fp8 import decode
    else:
        raise CheckpointError(index.files[0], f"quantized checkpoint ({method}): prunescope cannot decode this "
                                              "format", "supported: compressed-tensors, GPTQ, AWQ, bitsandbytes, FP8")
    by_name = {tensor.name: tensor for tensor in index.tensors if tensor.alias_of is None}
    with SmallReads() as reads:
        encoded, overhead, quantization = decode(by_name, quant_config, config or {}, reads)
    if source:
        quantization = quantization.replace(notes=quantization.notes + (f"quantization config from {source}",))
    return _logical_index(index, encoded, overhead, quantization)


def _quantization_config(index: TensorIndex, config: dict) -> tuple[dict, str]:
    """config.json's quantization_config (compression_config before compressed-tensors 0.7), else
    a quantize_config.json beside the weights (AutoGPTQ checkpoints)."""
    for key in ("quantization_config", "compression_config"):
        if isinstance(config.get(key), dict):
            return config[key], ""
    folder = os.path.dirname(index.files[0]) if index.files else ""
    path = os.path.join(folder, "quantize_config.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            raise CheckpointError(path, "unreadable quantize_config.json", "fix or remove it") from None
        if isinstance(data, dict):
            return {"quant_method": "gptq", **data}, "quantize_config.json"
    return {}, ""


def _method(quant_config: dict, index: TensorIndex) -> str | None:
    method = quant_config.get("quant_method")
    if isinstance(method, str) and method:
        method = method.lower()
        return {"compressed_tensors": "compressed-tensors", "bnb": "bitsandbytes"}.get(method, method)
    names = index.joined_names
    if ".weight_packed\0" in names or ".weight_shape\0" in names or ".bitmask\0" in names:
        return "compressed-tensors"
    if ".quant_state.bitsandbytes__" in names or ".SCB\0" in names:
        return "bitsandbytes"
    if ".weight_scale_inv\0" in names:
        return "fp8"
    if ".qweight\0" in names:
        raise CheckpointError(index.files[0], "quantized checkpoint: packed `qweight` tensors without a quantization "
                                              "config, and GPTQ and AWQ pack them differently", "put the model's config.json (or "
                                                                       "quantize_config.json) beside the weights")
    return None


def _logical_index(index: TensorIndex, encoded: dict[str, Encoded], overhead: set[str],
                   quantization: Quantization) -> TensorIndex:
    """Each encoded weight takes its codes' place; the decoding tensors leave the parameter list."""
    by_data = {item.data.name: item for item in encoded.values()}
    tensors = []
    by_dtype: dict[str, int] = {}
    by_storage: dict[str, int] = {}
    overhead_elements = overhead_bytes = 0
    for tensor in index.tensors:
        if tensor.alias_of is not None:
            tensors.append(tensor)
            continue
        numel = tensor.numel
        size = numel * DTYPE_SIZES[tensor.dtype]
        by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + size
        item = by_data.get(tensor.name)
        if tensor.name in overhead:
            overhead_elements += numel
            overhead_bytes += size
        elif item is not None:
            tensors.append(item.logical)
            kind = storage_label(item)
            by_storage[kind] = by_storage.get(kind, 0) + item.logical.numel
        else:
            tensors.append(tensor)
            if tensor.is_parameter is not False:
                by_storage[tensor.dtype] = by_storage.get(tensor.dtype, 0) + numel
    quantization = quantization.replace(
        quantized_params=sum(item.logical.numel for item in encoded.values()),
        params_by_storage=by_storage,
        storage_bytes=sum(by_dtype.values()),
        storage_bytes_by_dtype=by_dtype,
        overhead_elements=overhead_elements,
        overhead_bytes=overhead_bytes)
    return index.replace(tensors=tuple(tensors), encoded=encoded, quantization=quantization)


def storage_label(item: Encoded) -> str:
    """How an encoded weight's values are stored, for people: "int4", "nf4", "F8_E4M3", "F8_E4M3 2:4"."""
    if item.scheme == BNB4:
        return item.parts["quant_type"] if isinstance(item.parts.get("quant_type"), str) else "4-bit"
    if item.scheme in (BITMASK, BITMASK_24):
        return f"{item.data.dtype} {'2:4' if item.scheme == BITMASK_24 else 'bitmask'}"
    if item.data.dtype in ("I32", "U8", "I8") or item.scheme == INT_ZERO_POINT:
        return f"int{item.bits}"
    return item.data.dtype


def unquantized_matrices(by_name: dict[str, TensorInfo], encoded: dict[str, Encoded], overhead: set[str]) -> tuple[str, ...]:
    """Modules whose matrices are stored as plain values although the model is quantized."""
    data_names = {item.data.name for item in encoded.values()}
    return tuple(sorted(name.rsplit(".", 1)[0] for name, tensor in by_name.items()
                        if name.endswith(".weight") and len(tensor.shape) >= 2 and name not in encoded
                        and name not in data_names and name not in overhead))


def logical(tensor: TensorInfo, name: str, shape, dtype: str) -> TensorInfo:
    """The dense weight a stored tensor encodes: logical name, shape and dtype; its location stays the codes'.
    (One per quantized matrix, hundreds per model: built like the header reader's records, every field
    given and the element count filled in.)"""
    shape = tuple(shape)
    count = 1
    for size in shape:
        count *= size
    return TensorInfo.unchecked(name, dtype, shape, tensor.file, tensor.offset, count, is_parameter=True)


def model_dtype(config: dict, fallback: str) -> str:
    """The dense model's dtype as config.json names it (torch_dtype / dtype), as a safetensors code."""
    names = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "half": "F16", "float": "F32"}
    value = config.get("torch_dtype") or config.get("dtype")
    return names.get(str(value).replace("torch.", ""), fallback)


PREAD = hasattr(os, "pread")
INTEGER_CODES = {"I64": "q", "I32": "i", "U8": "B", "I16": "h", "U16": "H", "U32": "I", "U64": "Q", "I8": "b"}


class SmallReads:
    """Reads of small tensors (shapes, quant states) through one descriptor per file. The safetensors
    library writes a file's data by dtype, then by name, so a compressed-tensors model's I64 shapes lie
    side by side: each read fetches a page, and the next shapes come from it (one read instead of 224
    for an 8B model)."""

    LIMIT = 1 << 16  # a shape or quant state is bytes; anything larger is not what we expect
    PAGE = 4096

    def __init__(self):
        self._fds: dict[str, int] = {}
        self._pages: dict[str, tuple[int, bytes]] = {}  # file -> (offset, bytes) of its last read

    def data(self, tensor: TensorInfo) -> bytes:
        size = tensor.numel * tensor.itemsize
        if tensor.stride is not None or size > self.LIMIT:
            raise CheckpointError(tensor.file, f"{tensor.name}: {size} bytes where a few were expected",
                                  "the file is corrupt or not what its names say")
        fd = self._fds.get(tensor.file)
        if fd is None:
            try:
                fd = self._fds[tensor.file] = os.open(tensor.file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as error:
                raise CheckpointError(tensor.file, f"cannot read: {error.strerror or error}", "check permissions") from None
        start, page = self._pages.get(tensor.file, (0, b""))
        if start <= tensor.offset and tensor.offset + size <= start + len(page):
            data = page[tensor.offset - start:tensor.offset - start + size]
        else:
            wanted = max(size, self.PAGE)
            page = os.pread(fd, wanted, tensor.offset) if PREAD else _seek_read(fd, wanted, tensor.offset)
            self._pages[tensor.file] = (tensor.offset, page)
            data = page[:size]
        if len(data) != size:
            raise CheckpointError(tensor.file, f"truncated: {tensor.name} could not be read", "re-save or re-download it")
        return data

    def integers(self, tensor: TensorInfo) -> list[int]:
        """An integer tensor's values (I64/I32), e.g. a logical shape."""
        code = INTEGER_CODES.get(tensor.dtype)
        if code is None:
            raise CheckpointError(tensor.file, f"{tensor.name}: {tensor.dtype} where integers were expected",
                                  "the file is corrupt or not what its names say")
        import struct

        return list(struct.unpack(f"<{tensor.numel}{code}", self.data(tensor)))

    def floats(self, tensor: TensorInfo) -> list[float]:
        if tensor.dtype != "F32":
            raise CheckpointError(tensor.file, f"{tensor.name}: {tensor.dtype} where float32 was expected",
                                  "the file is corrupt or not what its names say")
        import struct

        return list(struct.unpack(f"<{tensor.numel}f", self.data(tensor)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._pages.clear()


def _seek_read(fd: int, size: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def bad(tensor: TensorInfo, problem: str) -> CheckpointError:
    """A quantized tensor whose shapes do not fit its format: one line, never a guessed count."""
    return CheckpointError(tensor.file, f"{tensor.name}: {problem}", "the file is corrupt or not in the format its "
                                                                     "config names")
