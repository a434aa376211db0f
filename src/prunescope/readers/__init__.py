"""Stage 2: from checkpoint files to a TensorIndex. Readers know file formats, not architectures."""

from __future__ import annotations

import json
import os

from ..tensors import CheckpointError, TensorIndex
from .safetensors import read_safetensors_file, read_safetensors_headers


def read_tensor_index(weight_files: tuple[str, ...] | list[str], files=None) -> TensorIndex:
    """Read every tensor of one checkpoint: safetensors, torch zip or legacy files, or a shard index.
    `files` is the file access (readers/access.py): a remote model's, or local files the caller goes on
    reading (safetensors headers are read through it); None: local files, read directly."""
    if files is not None and files.remote:
        return _read_remote(weight_files, files)
    paths = local_weight_files(weight_files)
    if not paths:
        raise CheckpointError(",".join(weight_files) or "?", "no weight files", "nothing to analyse")
    return _joined([_read_one(path, files) for path in paths])


def local_weight_files(weight_files: tuple[str, ...] | list[str]) -> list[str]:
    """The files holding the tensors: a shard index's shards (each checked to exist) in its place."""
    paths = []
    for path in weight_files:
        paths.extend(_resolve_index(path) if path.endswith(".index.json") else [path])
    return paths


def _joined(indexes: list[TensorIndex]) -> TensorIndex:
    if len(indexes) == 1:
        return indexes[0]
    first = indexes[0]
    module_classes: dict[str, str] = {}
    for index in indexes:
        module_classes.update(index.module_classes)
    return TensorIndex(
        format=first.format,
        files=tuple(path for index in indexes for path in index.files),
        tensors=tuple(tensor for index in indexes for tensor in index.tensors),
        module_classes=module_classes,
        embedded_config=first.embedded_config,
        container=first.container,
        is_whole_module=any(index.is_whole_module for index in indexes),
        findings=tuple(finding for index in indexes for finding in index.findings),
    )


def _read_one(path: str, files=None) -> TensorIndex:
    if path.endswith(".safetensors"):
        tensors = read_safetensors_file(path, files)
        return TensorIndex(format="safetensors", files=(path,), tensors=tuple(tensors))
    if path.endswith(".gguf"):
        from .gguf import read_gguf_file  # the gguf package only when a GGUF file is read

        return read_gguf_file(path)
    from .torch_archive import read_torch_file  # zipfile and pickle only when a torch file is read

    return read_torch_file(path)


def _read_remote(weight_files, files) -> TensorIndex:
    """Safetensors headers only, through exact byte ranges: a torch pickle's structure is spread through
    the whole file, so remote pickles are refused."""
    paths, counts = [], {}
    for path in weight_files:
        if path.endswith(".index.json"):
            weight_map = _weight_map(path, files.read_whole(path))
            shards = _shards(path, weight_map)
            for shard in shards:
                if files.size(shard) is None:
                    raise CheckpointError(shard, "missing shard listed in " + path.rsplit("/", 1)[-1],
                                          "the remote model is incomplete")
            for name in weight_map.values():  # tensors per shard: how long each header will be
                shard = _beside(path, name)
                counts[shard] = counts.get(shard, 0) + 1
            paths += shards
        else:
            paths.append(path)
    for path in paths:
        if not path.endswith(".safetensors"):
            raise CheckpointError(path, "a remote torch pickle cannot be read from its headers",
                                  "download it first and give the local copy")
    headers = read_safetensors_headers(paths, files, counts)
    return _joined([TensorIndex(format="safetensors", files=(path,), tensors=tuple(tensors))
                    for path, tensors in zip(paths, headers)])


def shard_paths(index_path: str) -> list[str]:
    """Shard files named by a Hugging Face `*.index.json`, in first-appearance order."""
    try:
        with open(index_path, "rb") as handle:
            return _shards(index_path, _weight_map(index_path, handle.read()))
    except OSError as error:
        raise CheckpointError(index_path, f"cannot read shard index: {error.strerror or error}", "check permissions") from None


def _weight_map(index_path: str, raw: bytes) -> dict:
    try:
        weight_map = json.loads(raw)["weight_map"]
        # Every value a file name: checked on the few distinct ones (a list or dict among them is unhashable).
        if isinstance(weight_map, dict) and all(isinstance(shard, str) for shard in dict.fromkeys(weight_map.values())):
            return weight_map
    except (ValueError, KeyError, TypeError):
        pass
    raise CheckpointError(index_path, "shard index is not valid JSON with a weight_map", "re-save the model")


def _shards(index_path: str, weight_map: dict) -> list[str]:
    return [_beside(index_path, shard) for shard in dict.fromkeys(weight_map.values())]


def _beside(index_path: str, name: str) -> str:
    """A shard's path: beside its index, in a local folder or a remote one ("/"-separated)."""
    if "://" in index_path:
        return index_path.rsplit("/", 1)[0] + "/" + name
    return os.path.join(os.path.dirname(index_path), name)


def _resolve_index(index_path: str) -> list[str]:
    """The index's shard files; all must exist."""
    from .regular import non_regular_kind

    paths = shard_paths(index_path)
    for path in paths:
        kind = non_regular_kind(path)
        if kind == "missing":
            raise CheckpointError(path, "missing shard listed in " + os.path.basename(index_path),
                                  "copy the missing file or re-save the model")
        if kind is not None:
            raise CheckpointError(path, f"shard listed in {os.path.basename(index_path)} is {kind}, not a file",
                                  "point it to the real shard or re-save the model")
    return paths
