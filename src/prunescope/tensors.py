"""What a reader hands on: the tensors of a checkpoint, as names, shapes, dtypes and byte locations.

Nothing here knows about model architectures; nothing here reads tensor data.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from operator import attrgetter

from .records import Record


# Element sizes in bytes, keyed by the safetensors dtype codes, which every reader maps onto.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "C64": 8, "C128": 16,
}

MAX_RUNS = 1 << 22  # separate byte ranges a strided view may consist of (rows of a sliced matrix)

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})


class CheckpointError(Exception):
    """A checkpoint that cannot be read: says which file, what is wrong and what to do."""

    def __init__(self, path: str, problem: str, hint: str = ""):
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        text = f"{self.path}: {self.problem}"
        return f"{text} ({self.hint})" if self.hint else text


_NAME = attrgetter("name")

# TensorInfo's storage: a named tuple, with the element count as a last, derived field.
_TensorFields = namedtuple("_TensorFields", ("name", "dtype", "shape", "file", "offset", "stride", "alias_of",
                                             "is_parameter", "nbytes", "numel"))


class TensorInfo(_TensorFields):
    """One named tensor: where its bytes are and what they mean.

    A record like the others (fields by name, immutable, `replace`, compared by fields), kept in a
    named tuple rather than an instance dict: a Mixtral-8x7B header holds a thousand tensors, and a
    tuple is made in a third of the time, in a third of the memory. `numel`, the element count every
    stage asks for, is counted once when the tensor is made.

    Fields: name; dtype (a key of DTYPE_SIZES); shape; file; offset (of the first element in `file`);
    stride (in elements; None when contiguous); alias_of (the same tensor under an earlier name: tied
    weights); is_parameter (False for a module's buffer; None when the file does not say); nbytes (of a
    block-quantized tensor, GGUF's Q4_K, ..., whose elements have no whole byte size; None for every
    other type: numel x itemsize)."""

    __slots__ = ()
    _fields = _TensorFields._fields[:-1]  # the fields one gives; numel follows from the shape

    def __new__(cls, name: str, dtype: str, shape: tuple[int, ...], file: str, offset: int,
                stride: tuple[int, ...] | None = None, alias_of: str | None = None, is_parameter: bool | None = None,
                nbytes: int | None = None):
        numel = 1
        for size in shape:
            numel *= size
        return tuple.__new__(cls, (name, dtype, shape, file, offset, stride, alias_of, is_parameter, nbytes, numel))

    def __getnewargs__(self):  # pickled (Ray's workers receive tensors) as the fields given; numel is counted again
        return tuple(self)[:-1]

    @classmethod
    def unchecked(cls, name: str, dtype: str, shape: tuple[int, ...], file: str, offset: int, numel: int,
                  is_parameter: bool | None = None):
        """A tensor whose fields its caller has checked and whose elements it has counted: the header
        reader's loop (a thousand per Mixtral-8x7B header) and the quantized decoder's."""
        return tuple.__new__(cls, (name, dtype, shape, file, offset, None, None, is_parameter, None, numel))

    def replace(self, **changes):
        """A copy with some fields changed (dataclasses.replace); its element count follows the shape."""
        wrong = next((name for name in changes if name not in self._fields), None)
        if wrong is not None:
            raise TypeError(f"TensorInfo: unexpected field {wrong!r}")
        values = dict(zip(self._fields, self))
        values.update(changes)
        return TensorInfo(**values)

    _replace = __replace__ = replace  # namedtuple's own (and copy.replace's) would carry a stale numel

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES.get(self.dtype, 1) if self.nbytes is not None else DTYPE_SIZES[self.dtype]

    def byte_ranges(self) -> list[tuple[int, int]]:
        """(start, length) of the file ranges holding exactly this tensor's elements, merged where adjacent."""
        if self.numel == 0:
            return []
        item = self.itemsize
        if self.stride is None:
            return [(self.offset, self.nbytes if self.nbytes is not None else self.numel * item)]
        # Strided views (e.g. sliced weights saved with their whole storage): walk the outer
        # dimensions, keeping innermost runs of unit stride together. Size-1 dimensions have no
        # meaningful stride, and stride-0 dimensions (expanded views) repeat the same bytes.
        dims = [(size, step) for size, step in zip(self.shape, self.stride) if size != 1 and step != 0]
        inner = 1
        while dims and dims[-1][1] == inner:
            inner *= dims.pop()[0]
        runs = 1
        for size, _ in dims:
            runs *= size
        if runs > MAX_RUNS:
            raise CheckpointError(self.file, f"{self.name}: a strided view of {runs} separate pieces",
                                  "not a layout checkpoints use; the file is corrupt or hostile")
        run = inner * item
        ranges: list[tuple[int, int]] = []
        starts = [0]
        for size, step in dims:
            starts = [s + i * step for s in starts for i in range(size)]
        for start in starts:
            begin = self.offset + start * item
            if ranges and ranges[-1][0] + ranges[-1][1] == begin:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + run)
            else:
                ranges.append((begin, run))
        return ranges


class SecurityFinding(Record):
    """Something a pickle asked to import or call that no checkpoint needs. It was never called."""

    file: str
    what: str  # e.g. "posix.system"
    detail: str

    def line(self) -> str:
        return f"{self.file}: pickle references {self.what} ({self.detail}); it was not run"


class TensorIndex(Record):
    """Every tensor of one checkpoint plus what its files say about the modules holding them."""

    format: str  # "safetensors", "torch-zip", "torch-legacy"
    files: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]
    # Dotted module path -> "python.module.ClassName", for whole pickled modules only.
    module_classes: dict[str, str] = {}
    # The `config` attribute of a pickled model, as plain data (Hugging Face models carry one).
    embedded_config: dict | None = None
    # What wrapped the model in the file, e.g. "model" for torch.save({'model': m, ...}).
    container: str = ""
    is_whole_module: bool = False
    findings: tuple[SecurityFinding, ...] = ()
    # Other readings of the same file: each other module or state dict in it that holds tensors (a
    # training checkpoint's RNG state sits beside the model's state dict). The pipeline chooses.
    alternatives: tuple[TensorIndex, ...] = ()
    # Set by stage 2.5 (prunescope.quantized) on the logical index of a quantized checkpoint: logical
    # weight name -> how its values are stored (quantized.Encoded), and the encoding's description.
    encoded: dict = {}
    quantization: object = None

    @functools.cached_property
    def joined_names(self) -> str:
        """Every tensor's name, each followed by a NUL: a telltale name is then one substring search
        instead of a Python loop over a thousand names (a name holding a NUL could only be misread as
        a telltale, never hide one). Built once however many stages search it."""
        return "\0".join(map(_NAME, self.tensors)) + "\0" if self.tensors else ""
