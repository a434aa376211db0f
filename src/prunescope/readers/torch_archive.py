"""Files written by torch.save: the zip archive (default) and the legacy stream, read without torch.

Both hold a pickle describing the object and the raw bytes of its storages. The pickle is read by
`RestrictedUnpickler`, which runs nothing; the storages are located, never loaded.
"""

from __future__ import annotations

import os
import struct

from ..tensors import DTYPE_SIZES, CheckpointError, SecurityFinding, TensorIndex, TensorInfo
from .unpickler import RestrictedUnpickler, StandIn, StateDict, TensorRef, class_name_of, state_of

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def read_torch_file(path: str) -> TensorIndex:
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise CheckpointError(path, f"cannot read: {error.strerror or error}", "check the path and permissions") from None
    if magic == ZIP_MAGIC:
        return _read_zip(path)
    if magic[:1] == b"\x80":
        return _read_legacy(path)
    raise CheckpointError(path, "not a torch.save file (neither a zip archive nor a pickle)",
                          "is it a different format, or corrupt?")


# -- zip archives ----------------------------------------------------------------------------
def _read_zip(path: str) -> TensorIndex:
    import zipfile  # only torch archives need it; keeps the safetensors path light

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(path, f"corrupt or truncated torch archive: {error}", "re-save or re-download it") from None
    with archive:
        entries = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in entries if name.endswith("data.pkl") and name.count("/") == 1]
        if not pickles:
            raise CheckpointError(path, "zip archive without data.pkl", "not a torch.save checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = entries.get(prefix + "byteorder")
        if byteorder is not None and archive.read(byteorder).strip() not in (b"", b"little"):
            raise CheckpointError(path, "big-endian torch archive", "not supported; re-save it on a little-endian machine")
        try:
            pickled = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise CheckpointError(path, f"corrupt torch archive: {error}", "re-save or re-download it") from None
        unpickler, root = _unpickle(pickled, path, legacy=False)
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            locations = {}
            for key, ref in unpickler.storages.items():
                info = entries.get(f"{prefix}data/{key}")
                if info is None:
                    raise CheckpointError(path, f"storage {key} is missing from the archive", "the file is truncated or corrupt")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError(path, f"storage {key} is compressed", "torch never writes that; the file was repacked")
                handle.seek(info.header_offset)
                local = handle.read(30)
                if len(local) < 30 or local[:4] != ZIP_MAGIC:
                    raise CheckpointError(path, f"bad zip entry header for storage {key}", "the file is corrupt")
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                # The local extra field pads data to 64 bytes; the central directory's copy is empty.
                start = info.header_offset + 30 + name_length + extra_length
                if start + info.file_size > file_size:
                    raise CheckpointError(path, f"truncated: storage {key} ends past the end of the file", "re-save or re-download it")
                locations[key] = (start, info.file_size)
    return _index(path, "torch-zip", root, unpickler, locations)


# -- legacy format: magic, protocol, sys info, object, storage keys, then raw storages ---------
def _read_legacy(path: str) -> TensorIndex:
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        try:
            magic = RestrictedUnpickler(handle, path, legacy=True).load()
        except Exception:
            magic = None
        if magic != LEGACY_MAGIC:
            # A bare pickle with no torch framing cannot hold tensor data we could locate.
            raise CheckpointError(path, "pickle file that is not a torch.save checkpoint (no torch magic number)",
                                  "save it with torch.save")
        try:
            RestrictedUnpickler(handle, path, legacy=True).load()  # protocol version
            RestrictedUnpickler(handle, path, legacy=True).load()  # sys info
            unpickler = RestrictedUnpickler(handle, path, legacy=True)
            root = unpickler.load()
            keys = RestrictedUnpickler(handle, path, legacy=True).load()
        except CheckpointError:
            raise
        except Exception as error:
            found = _findings_text(unpickler) if "unpickler" in locals() else ""
            raise CheckpointError(path, f"corrupt or truncated legacy torch file: {type(error).__name__}: {error}"
                                  f"{found}", "re-save or re-download it") from None
        locations = {}
        position = handle.tell()
        for key in keys if isinstance(keys, list) else []:
            key = str(key)
            handle.seek(position)
            count_bytes = handle.read(8)
            if len(count_bytes) < 8:
                raise CheckpointError(path, f"truncated: storage {key} is missing", "re-save or re-download it")
            count = int.from_bytes(count_bytes, "little", signed=True)
            ref = unpickler.storages.get(key)
            itemsize = DTYPE_SIZES[ref.dtype] if ref is not None else 1
            length = count * itemsize
            if count < 0 or position + 8 + length > file_size:
                raise CheckpointError(path, f"truncated: storage {key} ends past the end of the file", "re-save or re-download it")
            locations[key] = (position + 8, length)
            position += 8 + length
    return _index(path, "torch-legacy", root, unpickler, locations)


def _unpickle(data: bytes, path: str, legacy: bool):
    import io

    unpickler = RestrictedUnpickler(io.BytesIO(data), path, legacy=legacy)
    try:
        root = unpickler.load()
    except Exception as error:  # a corrupt pickle can fail in many ways; none of them runs code
        raise CheckpointError(path, f"unreadable pickle: {type(error).__name__}: {error}{_findings_text(unpickler)}",
                              "the file is corrupt or hostile") from None
    return unpickler, root


def _findings_text(unpickler: RestrictedUnpickler) -> str:
    """Findings gathered before a pickle failed still reach the user."""
    if not unpickler.findings:
        return ""
    return "; SECURITY: it references " + ", ".join(what for what, _ in unpickler.findings) + " (nothing was run)"


# -- from the unpickled object to named tensors ------------------------------------------------
def _index(path, fmt, root, unpickler: RestrictedUnpickler, locations) -> TensorIndex:
    container, target = _find_model(root)
    module_classes: dict[str, str] = {}
    named: list[tuple[str, TensorRef, bool | None]] = []
    embedded_config = None
    is_module = _is_module(target)
    if is_module:
        _walk_module(target, "", named, module_classes, set())
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
            offset += int(view[1])
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
    findings = tuple(SecurityFinding(path, what, detail) for what, detail in unpickler.findings)
    return TensorIndex(format=fmt, files=(path,), tensors=tuple(tensors), module_classes=module_classes,
                       embedded_config=embedded_config, container=container, is_whole_module=is_module,
                       findings=findings)


def _is_module(obj) -> bool:
    state = state_of(obj)
    return state is not None and "_parameters" in state and "_modules" in state


def _find_model(root) -> tuple[str, object]:
    """The module or state dict inside what was saved: {'model': m, 'tokenizer': t}, {'state_dict': sd}, ..."""
    if _is_module(root) or _holds_tensors(root):
        return "", root
    if isinstance(root, dict):
        candidates = [(key, value) for key, value in root.items() if _is_module(value) or _holds_tensors(value)]
        for preferred in ("model", "state_dict", "module", "model_state_dict"):
            for key, value in candidates:
                if key == preferred:
                    return str(key), value
        if candidates:
            key, value = max(candidates, key=lambda item: _size(item[1]))
            return str(key), value
    return "", {}


def _holds_tensors(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(value, TensorRef) for value in obj.values())


def _size(obj) -> int:
    return len(obj) if isinstance(obj, dict) else 1 << 30


def _walk_module(module, prefix: str, named: list, classes: dict, visited: set) -> None:
    """Parameters and buffers in named_parameters()/named_buffers() order: the module's own, then children's."""
    if id(module) in visited:
        return
    visited.add(id(module))
    classes[prefix.rstrip(".")] = class_name_of(module)
    state = state_of(module) or {}
    for slot, is_parameter in (("_parameters", True), ("_buffers", False)):
        for name, value in _items(state.get(slot)):
            if isinstance(value, TensorRef):
                named.append((prefix + str(name), value, is_parameter))
    for name, child in _items(state.get("_modules")):
        if _is_module(child):
            _walk_module(child, f"{prefix}{name}.", named, classes, visited)


def _items(container):
    if isinstance(container, dict):
        return list(container.items())
    if isinstance(container, StandIn):
        return list(container.__dict__.get("_ps_items", {}).items())
    return []


def _plain(value, depth: int = 0):
    """Inert pickled data -> JSON-friendly values (for embedded configs)."""
    if depth > 8:
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, StateDict) or type(value) is dict:
        return {str(key): _plain(item, depth + 1) for key, item in value.items()}
    state = state_of(value)
    if state is not None:
        return {str(key): _plain(item, depth + 1) for key, item in state.items() if not str(key).startswith("_")}
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
