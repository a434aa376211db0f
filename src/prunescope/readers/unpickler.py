"""A pickle reader that executes nothing.

`find_class` never imports: every global a pickle names becomes an inert stand-in class that keeps
the module and name as data, except for the handful of torch rebuild functions, which are replaced
by pure functions of our own that describe the tensor instead of building it. Globals no checkpoint
needs (`posix.system`, `builtins.eval`, ...) are recorded as findings; calling their stand-ins does
nothing but record the arguments.
"""

from __future__ import annotations

import pickle
from ..records import Record

# torch storage classes and dtype objects, as they appear in pickles -> safetensors dtype codes.
STORAGE_DTYPES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL", "ComplexFloatStorage": "C64", "ComplexDoubleStorage": "C128",
    "UntypedStorage": "U8",
}
TORCH_DTYPES = {
    "float64": "F64", "double": "F64", "float32": "F32", "float": "F32", "float16": "F16", "half": "F16",
    "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
    "int64": "I64", "long": "I64", "int32": "I32", "int": "I32", "int16": "I16", "short": "I16",
    "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
    "complex64": "C64", "complex128": "C128",
}

# Modules whose globals have no business in a checkpoint: code execution, processes, files, network.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "webbrowser", "code", "codeop", "pickle", "_pickle", "marshal", "ctypes", "types", "multiprocessing",
    "asyncio", "threading", "_thread", "pdb", "bdb", "timeit", "platform", "signal", "commands", "popen2",
    "requests", "urllib", "urllib2", "http", "ftplib", "smtplib", "telnetlib", "tempfile", "glob", "io",
    "_io", "zipimport", "pkgutil", "inspect", "operator", "_operator", "ssl", "select", "selectors",
    "posixpath", "ntpath", "pathlib", "sqlite3", "dill", "cloudpickle", "joblib", "torch.hub",
})
# Packages whose classes checkpoints legitimately *call* while unpickling (enums, tokens, configs).
# Calling anything else is reported: torch.load would run it. (Creating instances without a call,
# as modules are pickled, is how every class in a checkpoint arrives, and needs no report.)
CALLABLE_ROOTS = frozenset({"torch", "transformers", "collections", "numpy", "tokenizers", "sentencepiece",
                            "peft", "accelerate", "LLMPruner", "copyreg", "_codecs", "builtins"})


def _bytes(value=b"", *_ignored):
    # bytes(n) / bytearray(n) would allocate n bytes: only conversions of actual data are honoured.
    return bytes(value) if isinstance(value, (bytes, bytearray)) else value.encode("latin1", "replace") \
        if isinstance(value, str) else b""


def _str(value="", *_ignored):
    # str() of a shared structure can expand exponentially: only scalars are converted.
    return value if isinstance(value, str) else str(value) if isinstance(value, (int, float, bool)) else ""


# Builtins that a checkpoint may legitimately reconstruct, in forms that cannot allocate without
# bound; everything else in builtins is a finding.
SAFE_BUILTINS = {
    "set": set, "frozenset": frozenset, "bytearray": _bytes, "bytes": _bytes, "slice": slice, "complex": complex,
    "list": list, "dict": dict, "tuple": tuple, "int": int, "float": float, "str": _str, "bool": bool,
    "object": object,
}


class _Sealed:
    """Objects of ours that a pickle's BUILD opcode must not rewrite."""

    def __setstate__(self, state):
        raise pickle.UnpicklingError("the pickle tries to modify a tensor description")


class StorageRef(_Sealed, Record):
    """A storage the pickle points to: its bytes live elsewhere in the file, found by `key`."""

    key: str
    dtype: str
    numel: int  # in elements of `dtype` (bytes for untyped storages)
    view: tuple | None = None  # legacy format: (view_key, offset, size) when this is a view


class TensorRef(_Sealed, Record):
    """A tensor as the pickle describes it; no data is loaded."""

    storage: StorageRef
    offset: int  # in elements of `dtype`
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    is_parameter: bool = False


class StandIn:
    """Base of the inert classes that replace every global a pickle names."""

    _ps_module = ""
    _ps_name = ""
    _ps_report = None  # callable(what, detail) set per unpickler, for finding reports

    def __new__(cls, *args, **kwargs):
        instance = object.__new__(cls)
        instance.__dict__["_ps_args"] = args
        return instance

    def __init__(self, *args, **kwargs):
        # Only reached when the pickle *calls* the global (REDUCE/INST), not for NEWOBJ.
        cls = type(self)
        if cls._ps_module.split(".")[0] not in CALLABLE_ROOTS and cls._ps_report is not None:
            cls._ps_report(cls.qualified_name(), f"called with {_short(args)}")

    def __setstate__(self, state):
        self.__dict__["_ps_state"] = state

    def __call__(self, *args, **kwargs):
        # A stand-in *instance* called: only exploit chains do that (getattr(...)(...)). Record, return inert.
        report = type(self)._ps_report
        if report is not None:
            report(f"call of the result of {type(self).qualified_name()}", f"with {_short(args)}")
        return StandIn.__new__(StandIn)

    def __setitem__(self, key, value):
        self.__dict__.setdefault("_ps_items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("_ps_list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("_ps_list", []).extend(values)

    @classmethod
    def qualified_name(cls) -> str:
        return f"{cls._ps_module}.{cls._ps_name}"


class StateDict(dict):
    """Stands in for collections.OrderedDict; accepts the `_metadata` BUILD that state dicts carry."""

    def __setstate__(self, state):
        self.metadata = state


def _short(value) -> str:
    """A bounded repr: a pickle's shared structures could make a full one exponentially long."""
    import reprlib

    limits = reprlib.Repr()
    limits.maxlevel, limits.maxstring, limits.maxother = 3, 240, 80
    limits.maxlist = limits.maxtuple = limits.maxdict = limits.maxset = 6
    text = limits.repr(value)
    return text if len(text) <= 320 else text[:317] + "..."


def state_of(obj) -> dict | None:
    """The attribute dict a pickled object was rebuilt with, if any."""
    if isinstance(obj, StandIn):
        state = obj.__dict__.get("_ps_state")
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        if isinstance(state, dict):
            return state
    return None


def class_name_of(obj) -> str:
    return type(obj).qualified_name() if isinstance(obj, StandIn) else type(obj).__name__


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles torch checkpoints into inert data. Tracks the storages referenced and any findings."""

    def __init__(self, stream, source: str, legacy: bool = False):
        super().__init__(stream)
        self.source = source
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}
        self.findings: list[tuple[str, str]] = []
        self._classes: dict[tuple[str, str], type] = {}

    def report(self, what: str, detail: str) -> None:
        self.findings.append((what, detail))

    # -- globals ---------------------------------------------------------------------------
    def find_class(self, module: str, name: str):
        # Python-2 names resolve as pickle's fix_imports resolves them (and torch.load with it):
        # `commands.Popen` is subprocess.Popen, `BaseHTTPServer.HTTPServer` is http.server's.
        import _compat_pickle

        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "collections" and name == "OrderedDict":
            return StateDict
        if module == "builtins" and name in SAFE_BUILTINS:
            return SAFE_BUILTINS[name]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return _Dtype(TORCH_DTYPES[name])
        rebuild = _REBUILDERS.get((module, name))
        if rebuild is not None:
            return rebuild
        if module == "copyreg" and name == "_reconstructor":
            return self._reconstructor
        if module == "_codecs" and name == "encode":
            return _latin1_encode  # how protocol-2 pickles spell bytes
        if module == "torch" and name == "Size":
            return tuple
        if module == "torch" and name == "device":
            return str
        root = module.split(".")[0]
        if module == "builtins" or root in DANGEROUS_MODULES or module in DANGEROUS_MODULES:
            self.report(f"{module}.{name}", "a global no checkpoint needs")
        return self._stand_in(module, name)

    def _stand_in(self, module: str, name: str) -> type:
        key = (module, name)
        cls = self._classes.get(key)
        if cls is None:
            cls = type(name.rsplit(".", 1)[-1], (StandIn,),
                       {"_ps_module": module, "_ps_name": name, "_ps_report": self.report})
            self._classes[key] = cls
        return cls

    def _reconstructor(self, cls, base, state=None):
        if isinstance(cls, type) and issubclass(cls, StandIn):
            return cls.__new__(cls)
        self.report(f"copyreg._reconstructor({_short(cls)})", "reconstructs a non-checkpoint object")
        return None

    # -- storages ------------------------------------------------------------------------
    def persistent_load(self, pid):
        if isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) in (5, 6):
            storage_type, key, numel = pid[1], pid[2], pid[4]  # pid[3]: the device it was saved from
            view = pid[5] if len(pid) == 6 else None
            if (isinstance(storage_type, _StorageType) and type(key) in (str, int) and _natural(numel)
                    and (view is None or _valid_view(view))):
                key = str(key)
                ref = StorageRef(key=key, dtype=storage_type.dtype, numel=numel,
                                 view=(str(view[0]), view[1], view[2]) if view else None)
                self.storages.setdefault(key, ref)
                return ref
        if self.legacy and isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # Legacy files persist module classes with their source code: the class is our stand-in,
            # the source stays unread text.
            if isinstance(pid[1], type) and issubclass(pid[1], StandIn):
                return pid[1]
        self.report(f"persistent id {_short(pid)}", "not a torch storage")
        return None


class _StorageType(_Sealed):
    def __init__(self, dtype: str):
        self.__dict__["dtype"] = dtype

    def __setattr__(self, name, value):
        raise pickle.UnpicklingError("the pickle tries to modify a storage type")

    def __call__(self, *args, **kwargs):
        return None


class _Dtype(_Sealed, str):
    """torch.float16 and friends: kept as the dtype code."""


def _natural(value) -> bool:
    return type(value) is int and value >= 0


def _valid_view(view) -> bool:
    return (isinstance(view, tuple) and len(view) == 3 and type(view[0]) in (str, int)
            and _natural(view[1]) and _natural(view[2]))


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str):
        return b""
    return text.encode("latin1" if encoding in ("latin1", "latin-1") else "utf-8", errors="replace")


def _tensor(storage, offset, size, stride, dtype=None):
    """A tensor description, checked: a crafted pickle can put anything in these arguments."""
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError(f"tensor without a valid storage: {_short(storage)}")
    if dtype is not None and not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError(f"tensor with an invalid dtype {_short(dtype)}")
    if not (_natural(offset) and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(_natural(value) for value in size + stride)):
        raise pickle.UnpicklingError(f"invalid tensor description: offset {_short(offset)}, size {_short(size)}, "
                                     f"stride {_short(stride)}")
    return TensorRef(storage=storage, offset=offset, shape=size, stride=stride,
                     dtype=str(dtype) if dtype is not None else storage.dtype)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_ignored):
    return _tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, *_ignored):
    if isinstance(data, TensorRef):
        return TensorRef(data.storage, data.offset, data.shape, data.stride, data.dtype, is_parameter=True)
    return data


def _rebuild_from_type(func, new_type, args, state=None):
    if func in _REBUILDERS.values():
        return func(*args)
    return None


def _unsupported_tensor(*_args, **_kwargs):
    return None


_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
}
for _name in ("_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor", "_rebuild_meta_tensor_no_storage",
              "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_numpy", "_rebuild_xla_tensor",
              "_rebuild_mtia_tensor", "_rebuild_device_tensor_from_cpu_tensor"):
    _REBUILDERS[("torch._utils", _name)] = _unsupported_tensor
