"""Files written by torch.save: the zip archive (default) and the legacy stream, read without torch.

Both hold a pickle describing the object and the raw bytes of its storages. The pickle is read by
`RestrictedUnpickler`, which runs nothing; the storages are located, never loaded.

A crafted pickle can still ask the unpickler itself for unbounded memory (a huge memo index) or
time (a hash bomb). On POSIX the reading therefore happens in a forked child process with memory
and CPU limits; the child sends back plain JSON, and a child that blows a limit is reported as a
suspected pickle bomb instead of taking the batch down with it.
"""

from __future__ import annotations

import json
import os
import struct

from ..tensors import DTYPE_SIZES, CheckpointError, SecurityFinding, TensorIndex, TensorInfo
from .unpickler import (OpcodeScan, RestrictedUnpickler, StandIn, StateDict, TensorRef, class_name_of, scan_opcodes,
                        state_of)

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_PICKLE_BYTES = 1 << 30  # data.pkl of a whole 70B model with its tokenizer is a few MB
CHILD_MEMORY_BYTES = 2 << 30  # address space a reading child may add to what it inherits
# CPU seconds a reading child may spend: reading the pickle of a whole 70B model takes about one.
def _cpu_seconds() -> int:
    text = os.environ.get("PRUNESCOPE_PICKLE_CPU_SECONDS", "60")
    return int(text) if text.isdigit() and int(text) > 0 else 60


CHILD_CPU_SECONDS = _cpu_seconds()
MAX_MODULES = 1_000_000
MAX_CONFIG_NODES = 100_000


def read_torch_file(path: str) -> TensorIndex:
    """The tensors of a torch.save file; read in a resource-limited child process where possible."""
    from .regular import require_regular_file

    require_regular_file(path)  # a FIFO or a device would block the read, or never end it
    if not hasattr(os, "fork") or os.environ.get("PRUNESCOPE_NO_FORK"):
        return read_torch_file_here(path)
    return _read_in_child(path)


def read_torch_file_here(path: str, on_scan=None) -> TensorIndex:
    """The same, in this process (no resource limits). `on_scan` hears each pickle's opcode scan
    before the pickle is read, so that a reading killed by a limit can still say what it named."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
            is_pickle = magic[:4] != ZIP_MAGIC and _starts_with_a_pickle(
                _Within(handle, os.fstat(handle.fileno()).st_size))
    except OSError as error:
        raise CheckpointError(path, f"cannot read: {error.strerror or error}", "check the path and permissions") from None
    if magic == ZIP_MAGIC:
        return _read_zip(path, on_scan)
    if is_pickle:
        return _read_legacy(path, on_scan)
    raise CheckpointError(path, "not a torch.save file (neither a zip archive nor a pickle)",
                          "is it a different format, or corrupt?")


class _Within:
    """A file whose read(n) never asks for more than the file holds: a crafted length prefix
    (BINBYTES of 2**32) would otherwise make the buffered reader allocate that much first."""

    def __init__(self, handle, size: int):
        self.handle, self.size = handle, size

    def read(self, count: int = -1) -> bytes:
        left = max(self.size - self.handle.tell(), 0)
        return self.handle.read(left if count is None or count < 0 else min(count, left))

    def readline(self, limit: int = -1) -> bytes:
        return self.handle.readline(limit)

    def tell(self) -> int:
        return self.handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)


def _starts_with_a_pickle(handle) -> bool:
    """Whether the file opens with a complete pickle, of any protocol: protocols 0 and 1 have no
    PROTO opcode to recognise them by, and torch.load would unpickle them all the same."""
    import pickletools

    handle.seek(0)
    try:
        for opcode, _argument, _position in pickletools.genops(handle):
            if opcode.name == "STOP":
                return True
    except Exception:  # not opcodes: not a pickle
        return False
    return False


# -- the child process ---------------------------------------------------------------------------
def _read_in_child(path: str) -> TensorIndex:
    import select
    import signal

    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child: read, answer in JSON, never return into the caller's code
        status = 0
        try:
            os.close(reading)
            _limit_child_resources()
            def tell_scan(scan):  # written first: the parent still hears it if a limit kills the reading
                _write_all(writing, json.dumps({"scan": list(scan.suspicious)}).encode() + b"\n")

            try:
                answer = {"index": _index_to_json(read_torch_file_here(path, tell_scan))}
            except CheckpointError as error:
                answer = {"error": [error.path, error.problem, error.hint]}
            except MemoryError:
                answer = {"error": [path, BOMB, "the file was not loaded"]}
            except BaseException as error:  # noqa: BLE001 - the parent turns it into one line
                answer = {"error": [path, f"unreadable: {type(error).__name__}: {str(error)[:200]}",
                                    "the file is corrupt or hostile"]}
            _write_all(writing, json.dumps(answer).encode() + b"\n")
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(writing)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([reading], [], [], CHILD_CPU_SECONDS + 30)
            if not ready:
                os.kill(child, signal.SIGKILL)
                break
            chunk = os.read(reading, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(reading)
        _, status = os.waitpid(child, 0)
    answer, named = None, []
    for line in b"".join(chunks).split(b"\n"):
        try:
            message = json.loads(line)
        except ValueError:
            continue  # the end of a message cut short by a limit
        if isinstance(message, dict) and "scan" in message:
            named += message["scan"]
        elif isinstance(message, dict):
            answer = message
    if answer is None:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"status {os.WEXITSTATUS(status)}"
        raise CheckpointError(path, f"reading the pickle was stopped ({how}): it exceeded the time or memory "
                                    "any checkpoint needs" + _security_suffix(named),
                              "a pickle bomb? the file was not loaded") from None
    if "error" in answer:
        raise CheckpointError(*answer["error"])
    return _index_from_json(answer["index"])


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def _limit_child_resources() -> None:
    import resource

    try:
        with open("/proc/self/statm") as statm:  # address space inherited from the parent, in pages
            inherited = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (inherited + CHILD_MEMORY_BYTES, resource.RLIM_INFINITY))
    except (OSError, ValueError, resource.error):
        pass  # no /proc (macOS): the CPU limit still holds
    try:
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU, (spent + CHILD_CPU_SECONDS, resource.RLIM_INFINITY))
    except (ValueError, resource.error):
        pass


def _index_to_json(index: TensorIndex) -> dict:
    return {
        "format": index.format, "files": list(index.files),
        "tensors": [[t.name, t.dtype, list(t.shape), t.file, t.offset, list(t.stride) if t.stride else None,
                     t.alias_of, t.is_parameter] for t in index.tensors],
        "module_classes": index.module_classes, "embedded_config": index.embedded_config,
        "container": index.container, "is_whole_module": index.is_whole_module,
        "findings": [[f.file, f.what, f.detail] for f in index.findings],
        "alternatives": [_index_to_json(alternative) for alternative in index.alternatives],
    }


def _index_from_json(data: dict) -> TensorIndex:
    tensors = tuple(TensorInfo(name=name, dtype=dtype, shape=tuple(shape), file=file, offset=offset,
                               stride=tuple(stride) if stride else None, alias_of=alias_of, is_parameter=is_parameter)
                    for name, dtype, shape, file, offset, stride, alias_of, is_parameter in data["tensors"])
    return TensorIndex(format=data["format"], files=tuple(data["files"]), tensors=tensors,
                       module_classes=data["module_classes"], embedded_config=data["embedded_config"],
                       container=data["container"], is_whole_module=data["is_whole_module"],
                       findings=tuple(SecurityFinding(*finding) for finding in data["findings"]),
                       alternatives=tuple(_index_from_json(alternative) for alternative in data["alternatives"]))


# -- zip archives ----------------------------------------------------------------------------
def _read_zip(path: str, on_scan=None) -> TensorIndex:
    import zipfile  # only torch archives need it; keeps the safetensors path light

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                # torch and Python's zipfile would pick different copies: one could hide a payload.
                raise CheckpointError(path, "zip archive with duplicate entry names", "the file is corrupt or hostile")
            entries = dict(zip(names, infos))
            pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointError(path, "zip archive without exactly one data.pkl", "not a torch.save checkpoint")
            prefix = pickles[0][: -len("data.pkl")]
            for info in infos:
                if info.flag_bits & 0x1 or info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError(path, f"entry {info.filename} is encrypted or compressed",
                                          "torch never writes that; the file was repacked or is hostile")
            byteorder = entries.get(prefix + "byteorder")
            if byteorder is not None and archive.read(byteorder).strip() not in (b"", b"little"):
                raise CheckpointError(path, "big-endian torch archive", "not supported; re-save it on a little-endian machine")
            if entries[pickles[0]].file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(path, "data.pkl is larger than any checkpoint's", "the file is corrupt or hostile")
            pickled = archive.read(pickles[0])
    except CheckpointError:
        raise
    except Exception as error:  # zipfile fails in many ways on damaged files; all mean the same here
        raise CheckpointError(path, f"corrupt or truncated torch archive: {type(error).__name__}: {error}",
                              "re-save or re-download it") from None
    unpickler, root = _unpickle(pickled, path, on_scan)
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        locations = {}
        for key in unpickler.storages:
            info = entries.get(f"{prefix}data/{key}")
            if info is None:
                raise _error(path, f"storage {key} is missing from the archive", [unpickler],
                             "the file is truncated or corrupt")
            handle.seek(info.header_offset)
            local = handle.read(30)
            if len(local) < 30 or local[:4] != ZIP_MAGIC:
                raise _error(path, f"bad zip entry header for storage {key}", [unpickler], "the file is corrupt")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            # The local extra field pads data to 64 bytes; the central directory's copy is empty.
            start = info.header_offset + 30 + name_length + extra_length
            if start + info.file_size > file_size:
                raise _error(path, f"truncated: storage {key} ends past the end of the file", [unpickler],
                             "re-save or re-download it")
            locations[key] = (start, info.file_size)
    return _index(path, "torch-zip", root, unpickler, locations, [unpickler])


# -- legacy format: magic, protocol, sys info, object, storage keys, then raw storages ---------
def _read_legacy(path: str, on_scan=None) -> TensorIndex:
    unpicklers: list[RestrictedUnpickler] = []

    def load(handle):
        start = handle.tell()
        scan = check_opcodes(handle, path, on_scan)
        handle.seek(start)
        unpickler = RestrictedUnpickler(handle, path, legacy=True)
        unpickler.scan = scan
        unpicklers.append(unpickler)
        return unpickler.load()

    with open(path, "rb") as raw:
        file_size = os.fstat(raw.fileno()).st_size
        handle = _Within(raw, file_size)
        try:
            magic = load(handle)
        except CheckpointError:
            raise
        except Exception:
            magic = None
        if magic != LEGACY_MAGIC:
            # A bare pickle with no torch framing cannot hold tensor data we could locate.
            raise _error(path, "pickle file that is not a torch.save checkpoint (no torch magic number)", unpicklers,
                         "save it with torch.save")
        try:
            load(handle)  # protocol version
            load(handle)  # sys info
            root = load(handle)
            unpickler = unpicklers[-1]
            keys = load(handle)
        except CheckpointError as error:
            raise _error(path, error.problem, unpicklers, error.hint) from None
        except MemoryError:
            raise _error(path, BOMB, unpicklers, "the file was not loaded") from None
        except Exception as error:
            raise _error(path, f"corrupt or truncated legacy torch file: {type(error).__name__}: {error}", unpicklers,
                         "re-save or re-download it") from None
        locations = {}
        position = handle.tell()
        for key in keys if isinstance(keys, list) else []:
            key = str(key) if type(key) in (str, int) else None
            ref = unpickler.storages.get(key)
            handle.seek(position)
            count_bytes = handle.read(8)
            if len(count_bytes) < 8:
                raise _error(path, f"truncated: storage {key} is missing", unpicklers, "re-save or re-download it")
            count = int.from_bytes(count_bytes, "little", signed=True)
            length = count * (DTYPE_SIZES.get(ref.dtype, 1) if ref is not None else 1)
            if count < 0 or position + 8 + length > file_size:
                raise _error(path, f"truncated: storage {key} ends past the end of the file", unpicklers,
                             "re-save or re-download it")
            if key is not None:
                locations[key] = (position + 8, length)
            position += 8 + length
    return _index(path, "torch-legacy", root, unpickler, locations, unpicklers)


BOMB = "the pickle asks for more memory than any checkpoint needs (a pickle bomb?)"


def check_opcodes(stream, path: str, on_scan=None) -> OpcodeScan:
    """Walk the pickle's opcodes without executing any (pickletools): what it names and calls, said
    even when the file is then refused. Memo indices no pickler writes are refused: CPython's C
    unpickler, which torch.load uses, allocates its memo up to the largest index it is given."""
    scan = scan_opcodes(stream)
    if on_scan is not None:
        on_scan(scan)
    if scan.memo_problem:
        raise CheckpointError(path, scan.memo_problem + _security_suffix(scan.suspicious),
                              "the file is corrupt or hostile")
    return scan


def _unpickle(data: bytes, path: str, on_scan=None):
    import io

    scan = check_opcodes(io.BytesIO(data), path, on_scan)
    unpickler = RestrictedUnpickler(io.BytesIO(data), path)
    unpickler.scan = scan
    try:
        root = unpickler.load()
    except MemoryError:
        raise _error(path, BOMB, [unpickler], "the file was not loaded") from None
    except Exception as error:  # a corrupt pickle can fail in many ways; none of them runs code
        raise _error(path, f"unreadable pickle: {type(error).__name__}: {str(error)[:200]}", [unpickler],
                     "the file is corrupt or hostile") from None
    return unpickler, root


def _error(path: str, problem: str, unpicklers, hint: str) -> CheckpointError:
    """A CheckpointError that still tells what the pickles referenced before things went wrong; when
    the reading stopped before anything was reported, what the opcode scan found."""
    found = [what for unpickler in unpicklers for what, _ in unpickler.findings]
    if not found:
        found = [name for unpickler in unpicklers if unpickler.scan for name in unpickler.scan.suspicious]
    return CheckpointError(path, problem + _security_suffix(found), hint)


def _security_suffix(found) -> str:
    return "; SECURITY: it references " + ", ".join(dict.fromkeys(found)) + " (nothing was run)" if found else ""


# -- from the unpickled object to named tensors ------------------------------------------------
def _index(path, fmt, root, unpickler: RestrictedUnpickler, locations, unpicklers) -> TensorIndex:
    try:
        return _index_unchecked(path, fmt, root, unpickler, locations, unpicklers)
    except CheckpointError as error:
        raise _error(error.path, error.problem, unpicklers, error.hint) from None
    except Exception as error:  # crafted structures can break any assumption; say so, in one line
        raise _error(path, f"malformed pickle contents: {type(error).__name__}: {str(error)[:200]}", unpicklers,
                     "the file is corrupt or hostile") from None


def _index_unchecked(path, fmt, root, unpickler, locations, unpicklers) -> TensorIndex:
    findings = tuple(SecurityFinding(path, what, detail) for u in unpicklers for what, detail in u.findings)
    candidates = _find_models(root)
    first = _reading(path, fmt, *candidates[0], locations, findings)
    alternatives = []
    for container, target in candidates[1:]:
        try:
            alternatives.append(_reading(path, fmt, container, target, locations, findings))
        except CheckpointError:
            pass  # only the first choice must be readable; the others are offered, not required
    return first.replace(alternatives=tuple(alternatives))


def _reading(path, fmt, container, target, locations, findings) -> TensorIndex:
    """The tensors of one module or state dict inside the saved object."""
    module_classes: dict[str, str] = {}
    named: list[tuple[str, TensorRef, bool | None]] = []
    embedded_config = None
    is_module = _is_module(target)
    if is_module:
        _walk_modules(target, named, module_classes)
        embedded_config = _plain(state_of(target).get("config"))
        if not isinstance(embedded_config, dict):
            embedded_config = None
    elif isinstance(target, dict):
        for name, value in target.items():
            if isinstance(value, TensorRef):
                named.append((str(name), value, value.is_parameter or None))
    tensors = []
    seen: dict[tuple, str] = {}
    for name, ref, is_parameter in named:
        view = ref.storage.view
        key = ref.storage.key
        offset = ref.offset
        if view:  # legacy views: (view_key, element offset into the root storage, size)
            offset += view[1]
        location = locations.get(key)
        if location is None:
            raise CheckpointError(path, f"tensor {name!r} points to storage {key}, which the file lacks",
                                  "the file is truncated or corrupt")
        if ref.dtype not in DTYPE_SIZES:
            raise CheckpointError(path, f"tensor {name!r} has unknown dtype {ref.dtype!r}", "upgrade prunescope or report it")
        itemsize = DTYPE_SIZES[ref.dtype]
        contiguous = _contiguous_strides(ref.shape)
        stride = None if _same_layout(ref.shape, ref.stride, contiguous) else ref.stride
        span = _span(ref.shape, ref.stride)
        if span and (offset + span) * itemsize > location[1]:
            raise CheckpointError(path, f"pickle lies about {name!r}: it reaches past its storage's {location[1]} bytes",
                                  "the file is corrupt")
        identity = (key, offset, ref.shape, ref.stride, ref.dtype)
        tensors.append(TensorInfo(name=name, dtype=ref.dtype, shape=ref.shape, file=path,
                                  offset=location[0] + offset * itemsize, stride=stride,
                                  alias_of=seen.get(identity), is_parameter=is_parameter))
        seen.setdefault(identity, name)
    return TensorIndex(format=fmt, files=(path,), tensors=tuple(tensors), module_classes=module_classes,
                       embedded_config=embedded_config, container=container, is_whole_module=is_module,
                       findings=findings)


def _is_module(obj) -> bool:
    state = state_of(obj)
    return state is not None and "_parameters" in state and "_modules" in state


def _find_models(root) -> list[tuple[str, object]]:
    """The modules and state dicts inside what was saved ({'model': m, 'tokenizer': t}, {'state_dict':
    sd}, ...), the likeliest first. A training checkpoint's top level may itself hold a tensor (an RNG
    state) beside the model's dict: both are offered, and the caller picks the one with the model."""
    if _is_module(root):
        return [("", root)]
    found = [("", root)] if _holds_tensors(root) else []
    if isinstance(root, dict):
        candidates = [(str(key), value) for key, value in root.items() if _is_module(value) or _holds_tensors(value)]
        ranked = sorted(candidates, key=lambda item: (_PREFERRED.index(item[0]) if item[0] in _PREFERRED
                                                      else len(_PREFERRED), -_size(item[1])))
        found += ranked
    return found or [("", {})]


_PREFERRED = ("model", "state_dict", "module", "model_state_dict")


def _holds_tensors(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(value, TensorRef) for value in obj.values())


def _size(obj) -> int:
    return len(obj) if isinstance(obj, dict) else 1 << 30


def _walk_modules(root, named: list, classes: dict) -> None:
    """Parameters and buffers in named_parameters()/named_buffers() order: each module's own, then its
    children's, depth first. Iterative: a crafted pickle can nest modules deeper than Python recurses."""
    visited: set[int] = set()
    pending = [(root, "")]
    while pending:
        module, prefix = pending.pop()
        if id(module) in visited:
            continue
        visited.add(id(module))
        if len(visited) > MAX_MODULES:
            raise CheckpointError("", "more modules than any model has", "the file is corrupt or hostile")
        classes[prefix.rstrip(".")] = class_name_of(module)
        state = state_of(module) or {}
        for slot, is_parameter in (("_parameters", True), ("_buffers", False)):
            for name, value in _items(state.get(slot)):
                if isinstance(value, TensorRef):
                    named.append((prefix + str(name), value, is_parameter))
        children = [(child, f"{prefix}{name}.") for name, child in _items(state.get("_modules")) if _is_module(child)]
        pending.extend(reversed(children))  # so that the first child is walked first


def _items(container):
    if isinstance(container, dict):
        return list(container.items())
    if isinstance(container, StandIn):
        return list(container.__dict__.get("_ps_items", {}).items())
    return []


def _plain(value, budget=None):
    """Inert pickled data -> JSON-friendly values (for embedded configs), within a node budget: shared
    sub-structures in a crafted pickle could otherwise expand exponentially."""
    budget = budget if budget is not None else [MAX_CONFIG_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, budget) for item in value[:1000]]
    if isinstance(value, StateDict) or type(value) is dict:
        return {str(key): _plain(item, budget) for key, item in list(value.items())[:1000]
                if isinstance(key, (str, int))}
    state = state_of(value)
    if state is not None:
        return {str(key): _plain(item, budget) for key, item in list(state.items())[:1000]
                if isinstance(key, str) and not key.startswith("_")}
    return None


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _same_layout(shape, stride, contiguous) -> bool:
    return all(size == 1 or a == b for size, a, b in zip(shape, stride, contiguous))


def _span(shape, stride) -> int:
    """Elements from the first to one past the last element the view touches."""
    if any(size == 0 for size in shape):
        return 0
    return 1 + sum((size - 1) * step for size, step in zip(shape, stride))
