"""A pickle reader that executes nothing.

`find_class` never imports: every global a pickle names becomes an inert stand-in class that keeps
the module and name as data. The opcodes that would run code under `torch.load` (REDUCE, INST, OBJ:
calls; BUILD: `__setstate__` or attribute writes) are handled here, one by one: a call runs only when
the callable is on an exact allow-list of what checkpoints need (`ALLOWED_CALLS`, our own pure
replacements for torch's rebuild functions among them); every other call is a finding naming the
callable, and gives an inert value. Globals from modules no checkpoint needs (`posix.system`,
`builtins.eval`, ...) are findings even when they are only named.

The pure-Python unpickler is the base class because its opcodes can be overridden one by one; it
also keeps the memo in a dict, where CPython's C unpickler allocates an array up to any index a file
names.
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
# Naming one of their globals is a finding even without a call (it may be called later, or serve as
# a factory or hook).
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "webbrowser", "code", "codeop", "pickle", "_pickle", "marshal", "ctypes", "types", "multiprocessing",
    "asyncio", "threading", "_thread", "pdb", "bdb", "timeit", "platform", "signal", "commands", "popen2",
    "requests", "urllib", "urllib2", "http", "ftplib", "smtplib", "telnetlib", "tempfile", "glob", "io",
    "_io", "zipimport", "pkgutil", "inspect", "operator", "_operator", "ssl", "select", "selectors",
    "posixpath", "ntpath", "sqlite3", "dill", "cloudpickle", "joblib", "torch.hub", "functools",
})

# Builtins that do nothing outside the values they are given (no I/O, no imports, no code, no calls of
# other callables): a checkpoint may name them (`sort_key=len` in saved arguments) and calling them is
# not reported. prunescope never computes them: the call gives an inert value.
PURE_BUILTINS = frozenset({
    "len", "abs", "round", "isinstance", "issubclass", "hash", "id", "ord", "chr", "hex", "oct", "bin",
    "callable", "divmod", "repr", "ascii", "range",
})


def _bytes(value=b"", *_ignored):
    # bytes(n) / bytearray(n) would allocate n bytes: only conversions of actual data are honoured.
    return bytes(value) if isinstance(value, (bytes, bytearray)) else value.encode("latin1", "replace") \
        if isinstance(value, str) else b""


def _str(value="", *_ignored):
    # str() of a shared structure can expand exponentially: only scalars are converted.
    return value if isinstance(value, str) else str(value) if isinstance(value, (int, float, bool)) else ""


def _collection(kind):
    """set(), list(), ... of real data only: a stand-in could be anything, a range any length."""
    def build(value=(), *_ignored):
        return kind(value) if isinstance(value, (list, tuple, set, frozenset, dict, str, bytes)) else kind()
    build.__name__ = kind.__name__
    return build


# Builtins that a checkpoint may legitimately reconstruct, in forms that cannot allocate without
# bound; every other builtin that is not pure is a finding.
SAFE_BUILTINS = {
    "set": _collection(set), "frozenset": _collection(frozenset), "bytearray": _bytes, "bytes": _bytes,
    "slice": slice, "complex": complex, "list": _collection(list), "dict": _collection(dict),
    "tuple": _collection(tuple), "int": int, "float": float, "str": _str, "bool": bool, "object": object,
}

# Classes whose construction does nothing but keep its arguments (paths, namespaces, numpy scalars and
# arrays, RNG states, dates): calling them gives an inert stand-in and no finding.
INERT_CALLS = frozenset({
    "argparse.Namespace", "types.SimpleNamespace",
    "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePath", "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
    "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
    "decimal.Decimal", "fractions.Fraction", "uuid.UUID",
    "numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random._pickle.__generator_ctor", "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    "torch.serialization._get_layout",
})


class _Sealed:
    """Objects of ours that a pickle's BUILD opcode must not rewrite."""


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
    """Base of the inert classes that replace every global a pickle names. Instances keep the
    arguments and state the pickle gives them; nothing of theirs ever runs."""

    _ps_module = ""
    _ps_name = ""

    def __new__(cls, *args, **kwargs):
        instance = object.__new__(cls)
        instance.__dict__["_ps_args"] = args
        return instance

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
    """Stands in for collections.OrderedDict; keeps the `_metadata` BUILD that state dicts carry."""


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


def resolve_name(module: str, name: str) -> tuple[str, str]:
    """Python-2 names resolve as pickle's fix_imports resolves them (and torch.load with it):
    `commands.Popen` is subprocess.Popen, `__builtin__.eval` is builtins.eval."""
    import _compat_pickle

    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def is_dangerous(module: str, name: str) -> bool:
    """Whether merely naming this global is a finding. A dotted name (`torch` + `os.system`) reaches
    attributes of attributes, as pickle protocol 4 resolves it: each step counts."""
    if f"{module}.{name}" in INERT_CALLS:
        return False
    if module == "builtins" and "." not in name:
        return name not in SAFE_BUILTINS and name not in PURE_BUILTINS and name != "getattr"
    steps = name.split(".")[:-1]
    return (module in DANGEROUS_MODULES or module.split(".")[0] in DANGEROUS_MODULES or module == "builtins"
            or any(step in DANGEROUS_MODULES or step.startswith("__") for step in steps))


REFERENCED = "a global no checkpoint needs"


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickles torch checkpoints into inert data. Tracks the storages referenced and any findings."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, stream, source: str, legacy: bool = False):
        super().__init__(stream)
        self.source = source
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}
        self.findings: list[tuple[str, str]] = []
        self._classes: dict[tuple[str, str], type] = {}
        # Every object find_class handed out, by id: (the object, its qualified name, callable?). The
        # object is kept so that its id stays unique for the whole load.
        self._globals: dict[int, tuple[object, str, bool]] = {}
        self.scan: OpcodeScan | None = None  # what the opcodes alone showed, set by the caller

    def report(self, what: str, detail: str) -> None:
        if (what, detail) not in self.findings:
            self.findings.append((what, detail))

    def report_call(self, what: str, args) -> None:
        """A call supersedes the finding that only said the global was named."""
        if (what, REFERENCED) in self.findings:
            self.findings.remove((what, REFERENCED))
        self.report(what, f"called with {_short(args)}")

    # -- globals ---------------------------------------------------------------------------
    def find_class(self, module: str, name: str):
        module, name = resolve_name(module, name)
        if is_dangerous(module, name):
            self.report(f"{module}.{name}", REFERENCED)
        found, callable_ = self._global(module, name)
        self._globals[id(found)] = (found, f"{module}.{name}", callable_)
        return found

    def _global(self, module: str, name: str) -> tuple[object, bool]:
        """What stands for `module.name`, and whether calling it is allowed."""
        qualified = f"{module}.{name}"
        if qualified == "collections.OrderedDict":
            return StateDict, True
        if module == "builtins" and name in SAFE_BUILTINS:
            return SAFE_BUILTINS[name], True
        if module == "builtins" and name == "getattr":
            return self._getattr, True
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name]), False
        if module == "torch" and name in TORCH_DTYPES:
            return _Dtype(TORCH_DTYPES[name]), False
        rebuild = _REBUILDERS.get((module, name))
        if rebuild is not None:
            return rebuild, True
        if qualified == "copyreg._reconstructor":
            return self._reconstructor, True
        if qualified == "_codecs.encode":
            return _latin1_encode, True  # how protocol-2 pickles spell bytes
        if qualified == "torch.Size":
            return _collection(tuple), True
        if qualified == "torch.device":
            return _str, True
        if qualified in ("collections.defaultdict", "collections.Counter"):
            return _dict_of, True
        allowed = qualified in INERT_CALLS or (module == "builtins" and name in PURE_BUILTINS)
        return self._stand_in(module, name), allowed

    def _stand_in(self, module: str, name: str) -> type:
        key = (module, name)
        cls = self._classes.get(key)
        if cls is None:
            cls = type(name.rsplit(".", 1)[-1], (StandIn,), {"_ps_module": module, "_ps_name": name,
                                                            "__module__": module, "__qualname__": name})
            self._classes[key] = cls
        return cls

    def _named_global(self, obj) -> tuple[str, bool] | None:
        entry = self._globals.get(id(obj))
        return (entry[1], entry[2]) if entry is not None and entry[0] is obj else None

    # -- the opcodes that run code under torch.load ---------------------------------------------
    def call(self, func, args):
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError(f"call with arguments that are not a tuple: {_short(args)}")
        named = self._named_global(func)
        if named is not None:
            name, allowed = named
            if not allowed:
                self.report_call(name, args)
                inert = func if isinstance(func, type) and issubclass(func, StandIn) else StandIn
                return _tainted(StandIn.__new__(inert, *args), name)
            if isinstance(func, type) and issubclass(func, StandIn):
                return func.__new__(func, *args)  # an inert class: keep the arguments
            return func(*args)
        if isinstance(func, StandIn):  # an object the pickle built, called: only exploit chains do that
            origin = func.__dict__.get("_ps_tainted") or type(func).qualified_name()
            self.report(f"call of the result of {origin}", f"with {_short(args)}")
            return _tainted(StandIn.__new__(StandIn), f"the result of {origin}")
        raise pickle.UnpicklingError(f"call of a {type(func).__name__}, which is not callable")

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args)

    def _instantiate(self, klass, args):  # INST and OBJ
        if args or not (isinstance(klass, type) and issubclass(klass, StandIn)):
            self.append(self.call(klass, tuple(args)))
        else:
            self.append(klass.__new__(klass))

    def load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        named = self._named_global(target)
        if named is not None:  # torch.load would set attributes on a class or function: monkey-patching
            self.report(named[0], f"state set on {named[0]}: {_short(state)}")
        elif isinstance(target, _Sealed):
            raise pickle.UnpicklingError("the pickle tries to modify a tensor description")
        elif isinstance(target, StandIn):
            target.__dict__["_ps_state"] = state
        elif isinstance(target, StateDict):
            target.metadata = state
        else:
            raise pickle.UnpicklingError(f"state set on a {type(target).__name__}, which has none")

    def _fills_global(self, target, what: str) -> bool:
        """APPEND/SETITEM on a global: torch.load would call its append or __setitem__ (os.environ[...])."""
        named = self._named_global(target)
        if named is not None:
            self.report(named[0], f"{what} on {named[0]}")
        return named is not None

    def load_setitem(self):
        if self._fills_global(self.stack[-3], "item set"):
            del self.stack[-2:]
        else:
            pickle._Unpickler.load_setitem(self)

    def load_append(self):
        if self._fills_global(self.stack[-2], "item appended"):
            self.stack.pop()
        else:
            pickle._Unpickler.load_append(self)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.APPEND[0]] = load_append

    def _getattr(self, target, name, *default):
        """getattr as pickles use it: `getattr(Outer, 'Inner')` for nested classes (protocols < 4) and
        `getattr(obj, 'method')` for bound methods (hooks). Anything else is reaching for code."""
        if isinstance(name, str) and not name.startswith("__"):
            named = self._named_global(target)
            if named is not None and isinstance(target, type) and issubclass(target, StandIn):
                return self.find_class(target._ps_module, f"{target._ps_name}.{name}")
            if isinstance(target, StandIn) and named is None and not target.__dict__.get("_ps_tainted"):
                return StandIn.__new__(self._stand_in(type(target)._ps_module, f"{type(target)._ps_name}.{name}"))
        self.report("builtins.getattr", f"reads {_short(name)} of {_describe(target, self._named_global(target))}")
        return _tainted(StandIn.__new__(StandIn), f"builtins.getattr(..., {_short(name)})")

    def _reconstructor(self, cls, base, state=None):
        # copyreg._reconstructor(cls, base, state) runs base.__new__(cls, state) and base.__init__ for
        # any base but object: only the builtin types Python's copyreg itself picks are allowed.
        base_name = self._named_global(base)
        if base_name is not None and not (base is object or base in SAFE_BUILTINS.values()):
            self.report(base_name[0], f"called by copyreg._reconstructor with {_short(state)}")
            return _tainted(StandIn.__new__(StandIn), base_name[0])
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


def _tainted(instance: StandIn, origin: str) -> StandIn:
    """The inert result of a reported call: anything read from it, or any call of it, is reported too."""
    instance.__dict__["_ps_tainted"] = origin
    return instance


def _describe(target, named) -> str:
    if named is not None:
        return named[0]
    if isinstance(target, StandIn):
        origin = target.__dict__.get("_ps_tainted")
        return f"the result of {origin}" if origin else f"a {type(target).qualified_name()}"
    return f"a {type(target).__name__}"


def _dict_of(*args):
    """defaultdict(factory) and Counter(): the items arrive by SETITEMS; the factory is never called."""
    return {}


class _StorageType(_Sealed):
    def __init__(self, dtype: str):
        self.__dict__["dtype"] = dtype

    def __setattr__(self, name, value):
        raise pickle.UnpicklingError("the pickle tries to modify a storage type")


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
    if func in _REBUILDERS.values() and isinstance(args, tuple):
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

# The exact callables a checkpoint may call, as written in the pickle (for the README and the scan).
ALLOWED_CALLS = frozenset(
    {f"{module}.{name}" for module, name in _REBUILDERS}
    | {f"builtins.{name}" for name in SAFE_BUILTINS} | {f"builtins.{name}" for name in PURE_BUILTINS}
    | INERT_CALLS
    | {"builtins.getattr", "collections.OrderedDict", "collections.defaultdict", "collections.Counter",
       "copyreg._reconstructor", "_codecs.encode", "torch.Size", "torch.device"})


def _guarded_items(load):
    """SETITEMS, APPENDS, ADDITEMS: the target sits below the mark."""
    def guarded(self):
        below = self.metastack[-1] if self.metastack else []
        if below and self._fills_global(below[-1], "items added"):
            self.pop_mark()
        else:
            load(self)
    return guarded


for _opcode, _load in ((pickle.SETITEMS, pickle._Unpickler.load_setitems),
                       (pickle.APPENDS, pickle._Unpickler.load_appends),
                       (pickle.ADDITEMS, pickle._Unpickler.load_additems)):
    RestrictedUnpickler.dispatch[_opcode[0]] = _guarded_items(_load)


# -- reading the opcodes without running them --------------------------------------------------------
class OpcodeScan(Record):
    """What a pickle names and calls, found from its opcodes alone (pickletools; nothing is built)."""

    suspicious: tuple[str, ...]  # "posix.system (called)", "torch.FloatStorage (state set)", ...
    memo_problem: str | None  # a memo index no pickler writes, which CPython's C unpickler would allocate
    complete: bool  # the opcodes parsed to STOP


class _Named:
    """A global on the simulated stack (or the result of calling one)."""

    def __init__(self, name: str, result: bool = False):
        self.name, self.result = name, result


def scan_opcodes(stream) -> OpcodeScan:
    """Walk one pickle's opcodes with a symbolic stack that only tracks globals, strings and marks:
    enough to say which globals are named, called and have state set, as the unpickler would report
    them. Linear in the pickle's length, whatever it describes."""
    import pickletools

    mark = object()
    stack: list = []
    memo: dict = {}
    found: dict[str, None] = {}
    memo_problem = None
    count = 0

    def note(target, what):
        if isinstance(target, _Named):
            name = f"the result of {target.name}" if target.result else target.name
            if target.result or what != "called" or target.name not in ALLOWED_CALLS:
                found[f"{name} ({what})"] = None

    try:
        for opcode, argument, _position in pickletools.genops(stream):
            count += 1
            name = opcode.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET") and memo_problem is None:
                if not isinstance(argument, int) or argument > count:
                    memo_problem = f"pickle memo index {argument} at opcode {count}: no pickler writes that"
            if name in ("GLOBAL", "INST"):
                module, _, attribute = str(argument).partition(" ")
                module, attribute = resolve_name(module, attribute)
                if is_dangerous(module, attribute):
                    found[f"{module}.{attribute}"] = None
                if name == "GLOBAL":
                    stack.append(_Named(f"{module}.{attribute}"))
                    continue
            before, after = opcode.stack_before, opcode.stack_after
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[argument] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(argument))
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "MARK":
                stack.append(mark)
            elif name == "STACK_GLOBAL":
                attribute, module = stack.pop(), stack.pop()
                if isinstance(module, str) and isinstance(attribute, str):
                    if is_dangerous(*resolve_name(module, attribute)):
                        found[".".join(resolve_name(module, attribute))] = None
                    stack.append(_Named(".".join(resolve_name(module, attribute))))
                else:
                    stack.append(None)
            elif after and after[0].name in ("str", "bytes", "bytes_or_str") and isinstance(argument, (str, bytes)) and not before:
                stack.append(argument.decode("latin1") if isinstance(argument, bytes) else argument)
            else:
                below = 0
                items = []
                if pickletools.markobject in before:
                    below = before.index(pickletools.markobject)
                    while stack and stack[-1] is not mark:
                        items.append(stack.pop())
                    stack.pop()  # the mark (IndexError when missing: a malformed pickle)
                    items.reverse()
                    popped = [stack.pop() for _ in range(below)][::-1] + items
                else:
                    popped = [stack.pop() for _ in range(len(before))][::-1]
                result = None
                if name == "REDUCE" or name == "OBJ" or (name == "INST" and items):
                    callee = _Named(f"{module}.{attribute}") if name == "INST" else popped[0]
                    note(callee, "called")
                    if isinstance(callee, _Named):
                        result = _Named(callee.name, result=True)
                elif name == "BUILD":
                    note(popped[0], "state set")
                    result = popped[0]
                elif name in ("SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"):
                    note(popped[0], "items added")
                    result = popped[0]
                stack.extend([result] * len(after))
        complete = True
    except Exception:  # malformed opcodes or a stack the pickle underflows: the unpickler says what is wrong
        complete = False
    qualified = {entry.split(" (", 1)[0] for entry in found if entry.endswith(")")}
    return OpcodeScan(suspicious=tuple(entry for entry in found if entry not in qualified),
                      memo_problem=memo_problem, complete=complete)
