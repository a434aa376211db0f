"""Stage 2: from checkpoint files to a TensorIndex. Readers know file formats, not architectures."""

from __future__ import annotations

import json
import os

from ..tensors import CheckpointError, TensorIndex
from .safetensors import read_safetensors_file


def read_tensor_index(weight_files: tuple[str, ...] | list[str]) -> TensorIndex:
    """Read every tensor of one checkpoint: safetensors, torch zip or legacy files, or a shard index."""
    paths = []
    for path in weight_files:
        paths.extend(_resolve_index(path) if path.endswith(".index.json") else [path])
    if not paths:
        raise CheckpointError(",".join(weight_files) or "?", "no weight files", "nothing to analyse")
    indexes = [_read_one(path) for path in paths]
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


def _read_one(path: str) -> TensorIndex:
    if path.endswith(".safetensors"):
        tensors = read_safetensors_file(path)
        return TensorIndex(format="safetensors", files=(path,), tensors=tuple(tensors))
    if path.endswith(".gguf"):
        from .gguf import read_gguf_file  # the gguf package only when a GGUF file is read

        return read_gguf_file(path)
    from .torch_archive import read_torch_file  # zipfile and pickle only when a torch file is read

    return read_torch_file(path)


def shard_paths(index_path: str) -> list[str]:
    """Shard files named by a Hugging Face `*.index.json`, in first-appearance order."""
    try:
        with open(index_path, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except OSError as error:
        raise CheckpointError(index_path, f"cannot read shard index: {error.strerror or error}", "check permissions") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(index_path, "shard index is not valid JSON with a weight_map", "re-save the model") from None
    folder = os.path.dirname(index_path)
    return [os.path.join(folder, shard) for shard in shards]


def _resolve_index(index_path: str) -> list[str]:
    """The index's shard files; all must exist."""
    paths = shard_paths(index_path)
    for path in paths:
        if not os.path.isfile(path):
            raise CheckpointError(path, "missing shard listed in " + os.path.basename(index_path),
                                  "copy the missing file or re-save the model")
    return paths
