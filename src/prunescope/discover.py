"""Stage 1: find the models under a folder and recognise each checkpoint by its content, not its name."""

from __future__ import annotations

import json
import os
from .readers.regular import non_regular_kind
from .records import Record

# Folders never searched for checkpoints: our own output, VCS and caches.
IGNORED_DIRS = {"analysis", ".git", "__pycache__", ".cache", "node_modules"}
# JSON files that travel with models but are not model configs.
NOT_CONFIGS = {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
               "added_tokens.json", "preprocessor_config.json", "adapter_config.json", "trainer_state.json"}
# Files written beside models by trainers, optimisers and PEFT: not models (fnmatch patterns).
NOT_MODEL_FILES = ("training_args.bin", "optimizer*", "scheduler*", "scaler*", "rng_state*", "*optim_states*",
                   "adapter_model.*", "adapter_config.json")
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
PICKLE_SUFFIX = ".pkl"  # read when given as a path (torch.load reads any pickle); not searched for in folders
GGUF_SUFFIX = ".gguf"
MAX_DEPTH = 4


class Checkpoint(Record):
    kind: str  # "huggingface", "torch", "slicegpt" or "gguf"
    path: str  # the folder (huggingface) or the weight file (torch, slicegpt)
    weight_files: tuple[str, ...]  # weight files, or one shard index
    config_file: str | None = None
    slicing_config: str | None = None  # SliceGPT's <model>_<sparsity>.json
    origin: dict | None = None  # a remote model's location and file sizes (locate/); None on local disk


class ModelEntry(Record):
    name: str
    path: str  # the entry under --models_dir (or given with --model), as given
    checkpoint: Checkpoint | None = None
    skip_reason: str | None = None  # set when there is nothing to analyse
    error: str | None = None  # set when the entry could not be examined
    analysis_subdir: str = ""  # several checkpoints in one entry: each gets analysis/<subdir>/

    @property
    def status(self) -> str:
        return "error" if self.error else "skipped" if self.skip_reason else "found"


def discover_models(models_dir: str | None, include=(), exclude=(), extra_models=()) -> list[ModelEntry]:
    """One or more entries per item directly under `models_dir`, plus any `extra_models` paths; the
    same checkpoint reached twice (a --model inside --models_dir, two symlinks) is listed once."""
    entries: list[ModelEntry] = []
    names = sorted(name for name in os.listdir(models_dir)
                   if not name.startswith(".") and name not in IGNORED_DIRS) if models_dir else []
    for name in names:
        if include and not _matches(name, include):
            continue
        if exclude and _matches(name, exclude):
            continue
        entries.extend(examine(os.path.join(models_dir, name), name))
    for path in extra_models:
        entries.extend(examine(path, os.path.basename(os.path.normpath(path))))
    unique, seen = [], set()
    for entry in entries:
        key = os.path.realpath(entry.checkpoint.path) if entry.checkpoint else ("entry", entry.path)
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def examine(path: str, name: str) -> list[ModelEntry]:
    """The model(s) one path holds: a folder (searched a few levels deep) or a single checkpoint file."""
    kind = None if os.path.isdir(path) else non_regular_kind(path)
    if kind == "missing":
        return [ModelEntry(name, path, error=f"{path}: does not exist")]
    if kind is not None:  # never opened: a FIFO blocks, a device never ends
        return [ModelEntry(name, path, error=f"{path}: is {kind}, not a checkpoint file or a model folder")]
    if os.path.isfile(path):
        checkpoint = _file_checkpoint(path, os.path.dirname(path))
        if checkpoint is None:
            return [ModelEntry(name, path, skip_reason="not a model file")]
        return [ModelEntry(_strip_suffix(name), path, checkpoint)]
    try:
        checkpoints, evidence = find_checkpoints(path)
    except PermissionError as error:
        return [ModelEntry(name, path, error=f"{error.filename or path}: cannot list folder (permission denied; "
                                             "check its permissions)")]
    odd = [ModelEntry(name, path, error=f"{file}: is {kind}, not a checkpoint file") for file, kind in _odd_files(path)]
    if odd and not checkpoints:
        return odd
    if not checkpoints:
        return [ModelEntry(name, path, skip_reason=evidence)]
    if len(checkpoints) == 1:
        return [ModelEntry(name, path, checkpoints[0])]
    entries = []
    for checkpoint in checkpoints:
        relative = _strip_suffix(os.path.relpath(checkpoint.path, path)).replace(os.sep, "/")
        entries.append(ModelEntry(f"{name}/{relative}", path, checkpoint, analysis_subdir=relative.replace("/", "__")))
    return entries


def find_checkpoints(root: str) -> tuple[list[Checkpoint], str]:
    """Checkpoints below `root` (symlinks followed, loops skipped), and if none, why not."""
    checkpoints: list[Checkpoint] = []
    seen: set[str] = set()
    saw_results = saw_config = saw_adapter = False
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop(0)
        real = os.path.realpath(folder)
        if real in seen:
            continue  # a symlink loop, or the same folder reached twice
        seen.add(real)
        try:
            listing = _listing(folder)
        except PermissionError:
            if folder == root:
                raise
            continue
        files = [entry.name for entry in listing if _is(entry.is_file)]
        config = _model_config(folder, files)
        saw_config = saw_config or config is not None
        saw_results = saw_results or any(_looks_like_results(folder, name) for name in files if name.endswith(".json"))
        hf_weights = _hf_weights(folder, files)
        if hf_weights and (config is not None or hf_weights[0].endswith(".index.json")):
            # A saved model folder (or shards with their index but no config: still one model). What is
            # below it (e.g. trainer checkpoints) is not this model.
            kind = "huggingface" if config is not None else "safetensors" if ".safetensors" in hf_weights[0] else "torch"
            checkpoints.append(Checkpoint(kind, folder, hf_weights, config))
            continue
        saw_adapter = saw_adapter or any(name.startswith("adapter_model.") for name in files)
        for name in files:
            checkpoint = _file_checkpoint(os.path.join(folder, name), folder, files, config)
            if checkpoint is not None:
                checkpoints.append(checkpoint)
        if depth < MAX_DEPTH:
            pending.extend((entry.path, depth + 1) for entry in listing
                           if entry.name not in IGNORED_DIRS and not entry.name.startswith(".") and _is(entry.is_dir))
    if saw_adapter:
        reason = "a PEFT/LoRA adapter only (no model weights): analyse the merged model"
    elif saw_results:
        reason = "no model files (only evaluation results)"
    elif saw_config:
        reason = "config.json without weight files"
    else:
        reason = "no model files"
    return checkpoints, reason


def _odd_files(root: str) -> list[tuple[str, str]]:
    """Entries named like checkpoint files that are not regular files (FIFOs, devices, symlink loops,
    symlinks to nothing) in `root` and the folders below it that discovery searched."""
    odd, pending, seen = [], [(root, 0)], set()
    while pending:
        folder, depth = pending.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            listing = _listing(folder)
        except OSError:
            continue
        for entry in listing:
            name, path = entry.name, entry.path
            if _is(entry.is_dir):
                if depth < MAX_DEPTH and name not in IGNORED_DIRS and not name.startswith("."):
                    pending.append((path, depth + 1))
            elif name.endswith(TORCH_SUFFIXES + (".safetensors", ".json")) and not _is(entry.is_file):
                odd.append((path, non_regular_kind(path) or "not a regular file"))
    return odd


def _listing(folder: str) -> list[os.DirEntry]:
    """A folder's entries by name. os.scandir knows from the listing itself what each entry is, where
    os.path.isfile would ask the file system once per file (a 19-shard model: 60 questions)."""
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _is(test) -> bool:
    """entry.is_file / entry.is_dir as os.path.isfile / isdir answer: symlinks followed, False on any error."""
    try:
        return test()
    except OSError:
        return False


def _hf_weights(folder: str, files: list[str]) -> tuple[str, ...]:
    """The weights transformers would load from this folder: safetensors first, then pytorch_model*.bin."""
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        if index_name in files:
            return (os.path.join(folder, index_name),)
        matches = [name for name in files if _matches(name, (pattern,)) and not _not_a_model(name)]
        if matches:
            return tuple(os.path.join(folder, name) for name in matches)
    return ()


def _file_checkpoint(path: str, folder: str, files=None, config=None) -> Checkpoint | None:
    name = os.path.basename(path)
    if _not_a_model(name):
        return None
    if name.endswith(".safetensors") and files is None:
        config = _model_config(folder or ".", os.listdir(folder or "."))
    if name.endswith(".safetensors"):
        return Checkpoint("huggingface" if config else "safetensors", path, (path,), config)
    if name.endswith(GGUF_SUFFIX):
        return Checkpoint("gguf", path, (path,))  # its own header is its config
    if not name.endswith(TORCH_SUFFIXES) and not (files is None and name.endswith(PICKLE_SUFFIX)):
        return None
    if files is None:  # a file given on its own: its folder may still hold its config
        files = os.listdir(folder or ".")
        config = _model_config(folder or ".", files)
    slicing = _strip_suffix(name) + ".json"
    if slicing in files and _is_slicing_config(os.path.join(folder, slicing)):
        return Checkpoint("slicegpt", path, (path,), config, os.path.join(folder, slicing))
    return Checkpoint("torch", path, (path,), config)


def _not_a_model(name: str) -> bool:
    return _matches(name, NOT_MODEL_FILES)


def _matches(name: str, patterns) -> bool:
    """Whether `name` matches one of the glob `patterns`. fnmatch is imported when first asked: a saved
    model folder with its shard index never is."""
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in patterns)


def _model_config(folder: str, files: list[str]) -> str | None:
    if "config.json" not in files:
        return None
    data = _json(os.path.join(folder, "config.json"))
    if isinstance(data, dict) and ("model_type" in data or "architectures" in data or "hidden_size" in data):
        return os.path.join(folder, "config.json")
    return None


def _is_slicing_config(path: str) -> bool:
    data = _json(path)
    return isinstance(data, dict) and "layers_num" in data and "embedding_dimensions" in data


def _looks_like_results(folder: str, name: str) -> bool:
    if name in NOT_CONFIGS or name == "config.json" or name.endswith(".index.json"):
        return False
    data = _json(os.path.join(folder, name), limit=50 * 1024 * 1024)
    return isinstance(data, dict) and ("results" in data or "acc" in data or "perplexity" in data)


def _json(path: str, limit: int = 10 * 1024 * 1024):
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > limit:
            return None  # a FIFO named config.json would block the read
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError, RecursionError):
        return None


def _strip_suffix(name: str) -> str:
    for suffix in TORCH_SUFFIXES + (".safetensors", PICKLE_SUFFIX, GGUF_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
