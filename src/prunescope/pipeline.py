"""The stages joined: discover -> read -> interpret -> measure -> compare -> report, for one model or a batch.

Functions here hold no state between calls; everything a run needs travels in its arguments.
"""

from __future__ import annotations

import json
import os
import stat

from . import __version__
from .compute import ComputeOptions, compute
from .discover import Checkpoint, ModelEntry, examine
from .locate import Location, in_hf_cache, locate, snapshot_origin
from .quantized import PLAIN, decode_quantization
from .readers import local_weight_files, read_tensor_index, shard_paths
from .readers.access import LocalFiles
from .atomic import write_atomic, write_json
from .console import structure_summary
from .interpret import ModelStructure, interpret
from .interpret.interpret import FROM_BASE, UNKNOWN
from .measure.layers import measure_layers
from .schema import (COMPARISON_FILE, STRUCTURE_FILE, SUMMARY_FILE, comparison_to_dict, structure_from_dict,
                     structure_to_dict)
from .tensors import CheckpointError, SecurityFinding
from .records import Record

TYPE_CHECKING = False  # typing's flag without importing typing: `compare` loads only with --base_model
if TYPE_CHECKING:
    from .compare import Comparison


class ModelAnalysis(Record):
    """One model's structure plus what its files said about it."""

    structure: ModelStructure
    checkpoint: Checkpoint
    format: str
    config: dict | None
    findings: tuple[SecurityFinding, ...]
    source: dict  # fingerprint of the files read, to reuse the analysis while they are unchanged


class ModelResult(Record):
    """What happened to one entry of a batch."""

    entry: ModelEntry
    status: str  # "analysed", "skipped" or "error"
    message: str = ""
    analysis: ModelAnalysis | None = None
    comparison: Comparison | None = None
    analysis_dir: str | None = None
    reused: bool = False
    notes: tuple[str, ...] = ()


def load_config(path: str | None, files=None) -> dict | None:
    """A JSON config, from local disk or through a remote model's file access."""
    if not path:
        return None
    try:
        if files is not None and files.remote:
            data = json.loads(files.read_whole(path))
        else:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
    except OSError as error:
        raise CheckpointError(path, f"cannot read: {error.strerror or error}", "check permissions") from None
    except ValueError:
        raise CheckpointError(path, "config is not valid JSON", "fix or remove it") from None
    return data if isinstance(data, dict) else None


def fingerprint(checkpoint: Checkpoint, shards: list[str] | None = None) -> dict:
    """Sizes and modification times of every file the analysis reads (`shards`: the weight files with
    shard indexes resolved, when the caller has them); for a model in a Hugging Face cache or on remote
    storage also where it comes from (repo and commit, URL and file sizes)."""
    if checkpoint.origin is not None:
        return {"prunescope_version": __version__, "origin": checkpoint.origin}
    real = os.path.realpath(checkpoint.path)
    origin = snapshot_origin(real)
    if shards is None:
        shards = []
        for path in checkpoint.weight_files:
            if path.endswith(".index.json"):
                try:
                    shards += shard_paths(path)
                except CheckpointError:
                    pass  # reading the checkpoint will say what is wrong with its index
    paths = list(checkpoint.weight_files) + [path for path in shards if path not in checkpoint.weight_files]
    paths += [path for path in (checkpoint.config_file, checkpoint.slicing_config) if path]
    # AutoGPTQ checkpoints keep their quantization config beside the weights (prunescope.quantized).
    beside = os.path.join(os.path.dirname(paths[0]), "quantize_config.json") if paths else ""
    if beside and os.path.isfile(beside):
        paths.append(beside)
    files, real_folders = [], {checkpoint.path: real}  # a folder's files are resolved through the folder
    for path in paths:
        try:
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                real_path, info = os.path.realpath(path), os.stat(path)
            else:
                real_path = _in_real_folder(path, real_folders)
            files.append({"path": real_path, "size": info.st_size, "mtime_ns": info.st_mtime_ns})
        except OSError:
            files.append({"path": _real_path(path, real_folders), "size": None, "mtime_ns": None})
    return {"prunescope_version": __version__, "files": files, **({"origin": origin} if origin else {})}


def _real_path(path: str, real_folders: dict[str, str]) -> str:
    """os.path.realpath(path), each folder resolved once (a sharded model's files share one: resolving
    every file walks the whole path again)."""
    return os.path.realpath(path) if os.path.islink(path) else _in_real_folder(path, real_folders)


def _in_real_folder(path: str, real_folders: dict[str, str]) -> str:
    """The path of a file that is not a symlink, through its folder's real path."""
    folder, name = os.path.split(path)
    if folder not in real_folders:
        real_folders[folder] = os.path.realpath(folder or os.curdir)
    return os.path.join(real_folders[folder], name)


def config_digest(config: dict | None) -> str | None:
    """A short checksum of a config, to tell whether an analysis used the same base config."""
    if not config:
        return None
    import zlib

    return f"{zlib.crc32(json.dumps(config, sort_keys=True, default=str).encode()):08x}"


def _depends_on_base(structure: ModelStructure) -> bool:
    # Only head_dim can come from the base config (when the model's own config does not give it).
    return structure.head_dim_source in (*FROM_BASE, UNKNOWN)


class ScanOptions(Record):
    """--sparsity: read every tensor's bytes (off by default: the header-only path reads almost nothing)."""

    device: str = "cpu"  # "cpu" (numba or numpy) or "cuda" (torch), as chosen by scan.choose_device
    workers: int | None = None
    progress: bool = False  # a progress bar in bytes, for people at a terminal
    executor: str = "local"  # "local" (this machine's cores) or "ray" (scan_ray: the workers of a cluster)
    address: str | None = None  # --address of the Ray cluster; None: RAY_ADDRESS, else a local instance
    unit_bytes: int | None = None  # Ray's unit of work; None: scan_units' (about 1 GiB); small in tests


def scan_options(device: str, executor: str = "local", address: str | None = None) -> tuple[ScanOptions, str]:
    """--sparsity's options from the command line, and where the scan runs, in words. With --executor
    ray the cluster is joined here, so that a missing extra or a wrong address is one line before any
    model is read; the workers count on their CPUs (--device is not theirs to follow)."""
    import sys

    progress = sys.stderr.isatty()
    if executor == "ray":
        from .measure.scan_ray import connect, describe_cluster

        connect(address)
        return ScanOptions(progress=progress, executor="ray", address=address), describe_cluster()
    from .measure.scan import choose_device  # numpy (and maybe torch) only when contents are scanned

    options = ScanOptions(device=choose_device(device), progress=progress)
    return options, options.device


def analyse_checkpoint(checkpoint: Checkpoint, name: str, base_config: dict | None = None,
                       scan: ScanOptions | None = None, options: ComputeOptions | None = None) -> ModelAnalysis:
    """Read, interpret and measure one checkpoint. Raises CheckpointError with a one-line reason."""
    if checkpoint.origin is not None:  # remote: small files first, in one batch
        from .locate.remote import open_remote

        files = open_remote(checkpoint.origin)
        files.preload(path for path in (checkpoint.config_file, *checkpoint.weight_files)
                      if path and path.endswith(".json"))
        return _analyse(checkpoint, name, checkpoint.weight_files, files, base_config, scan, options)
    with LocalFiles() as files:  # the headers and the first pages of each shard, through one descriptor
        return _analyse(checkpoint, name, local_weight_files(checkpoint.weight_files),  # a shard index read once
                        files, base_config, scan, options)


def _analyse(checkpoint, name, weight_files, files, base_config, scan, options) -> ModelAnalysis:
    source = {**fingerprint(checkpoint, None if files.remote else weight_files),
              "base_config": config_digest(base_config)}
    index = choose_model_reading(read_tensor_index(weight_files, files))
    config = load_config(checkpoint.config_file, files) or index.embedded_config
    index = decode_quantization(index, config)
    try:
        structure = interpret(index, name, config, base_config)
    except CheckpointError as error:
        if not index.findings:
            raise
        # Not a model we recognise, but what its pickle asked for must still reach the user.
        found = ", ".join(dict.fromkeys(finding.what for finding in index.findings))
        raise CheckpointError(error.path, f"{error.problem}; SECURITY: it references {found} (nothing was run)",
                              error.hint) from None
    if structure.quantization is not None and structure.total_params:
        structure = structure.replace(quantization=structure.quantization.replace(
            bits_per_param=round(structure.quantization.storage_bytes * 8 / structure.total_params, 4)))
    if checkpoint.kind == "slicegpt":
        slicing = load_config(checkpoint.slicing_config) or {}
        from .interpret.slicing import describe_slicing  # SliceGPT only

        structure = describe_slicing(structure, index, slicing, checkpoint.slicing_config)
    structure = measure_layers(structure, index, files)
    if scan is not None:
        structure = _scan_contents(structure, index, scan, files if files.remote else None)
    structure = with_compute(structure, options)
    return ModelAnalysis(structure, checkpoint, index.format, config, index.findings, source)


def with_compute(structure: ModelStructure, options: ComputeOptions | None) -> ModelStructure:
    """The structure with its FLOPs, KV cache and memory under `options` (kept when already computed so)."""
    options = options or ComputeOptions()
    if structure.compute is not None and structure.compute.options == options:
        return structure
    return structure.replace(compute=compute(structure, options))


def choose_model_reading(index):
    """Of the dicts and modules a torch file holds, the one holding the decoder layers: a training
    checkpoint ({"model": state_dict, "optimizer": ..., "torch_rng": tensor}) has a tensor at its top
    level too. The reader's own order decides ties."""
    if not index.alternatives:
        return index
    from .families import LAYER_NAME

    readings = (index,) + index.alternatives
    best = max(readings, key=lambda reading: sum(1 for tensor in reading.tensors if LAYER_NAME.match(tensor.name)))
    return best.replace(alternatives=())


def _scan_contents(structure: ModelStructure, index, options: ScanOptions, files=None) -> ModelStructure:
    from .measure.scan import apply_contents, scan_tensors

    skipped = set(structure.buffers)
    # Quantized weights are counted from their codes (measure/scan_quantized.py); fp8 and int8 weights
    # stored in the dense layout are read like any tensor.
    decoded = [item for item in index.encoded.values() if item.scheme != PLAIN]
    skipped |= {item.logical.name for item in decoded}
    tensors = [t for t in index.tensors if t.alias_of is None and t.name not in skipped]
    if files is not None and files.remote:
        from .locate.store import scan_remote  # --remote-scan: the weight files copied to a temporary folder

        return scan_remote(structure, tensors, files, lambda local: _scan_contents(
            structure, index.replace(tensors=tuple(local)), options))
    bar = None
    if options.progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(t.numel * t.itemsize for t in tensors) + sum(i.data.numel * i.data.itemsize for i in decoded),
                   unit="B", unit_scale=True, desc=f"scanning {structure.model_name}", leave=False)
    try:
        # Fused projections (Phi-3) are split into q/k/v and gate/up by rows, stacked experts into experts:
        # count their groups per row.
        fused = frozenset(name for layer in structure.layers
                          for name in (*layer.fused_rows, *layer.stacked_expert_tensors))
        progress = bar.update if bar else None
        if options.executor == "ray":
            from .measure.scan_ray import scan_tensors_ray

            contents = scan_tensors_ray(tensors, fused, progress, structure.model_name, options.address,
                                        options.unit_bytes)
        else:
            contents = scan_tensors(tensors, options.device, options.workers, progress, per_row_groups=fused)
        if decoded:
            from .measure.scan_quantized import scan_encoded

            contents.update(scan_encoded(decoded, options.workers, progress, fused))
            contents = {t.name: contents[t.name] for t in index.tensors if t.name in contents}  # file order
    finally:
        if bar is not None:
            bar.close()
    return apply_contents(structure, contents)


def analyse_reference(location: Location | str, base_config: dict | None = None,
                      scan: ScanOptions | None = None, options: ComputeOptions | None = None) -> ModelAnalysis:
    """A single model given by reference (a local path, a Hub repo id, a URL; see locate/), e.g. the base
    model or `inspect REF`. A remote Hub model's analysis is kept by (repo, commit) in prunescope's cache."""
    if isinstance(location, str):
        location = locate(location)
    if not location.is_remote:
        return analyse_path(location.path, base_config, scan, options, location.name)
    from .locate import store

    analysis = store.load(location.checkpoint, base_config) if scan is None else None
    if analysis is None:
        analysis = analyse_checkpoint(location.checkpoint, location.name, base_config, scan, options)
        if scan is None:
            store.save(analysis)
    return analysis.replace(structure=with_compute(analysis.structure, options))


def analyse_path(path: str, base_config: dict | None = None, scan: ScanOptions | None = None,
                 options: ComputeOptions | None = None, name: str | None = None) -> ModelAnalysis:
    """A single model given by path (a folder or a checkpoint file)."""
    name = name or os.path.basename(os.path.normpath(path))
    entries = examine(path, name)
    found = [entry for entry in entries if entry.checkpoint is not None]
    if not found:
        problem = entries[0].error or entries[0].skip_reason or "no model found"
        if problem.startswith(f"{path}: "):
            problem = problem[len(path) + 2:]
        raise CheckpointError(path, problem, "give a model folder or a checkpoint file")
    if len(found) > 1:
        raise CheckpointError(path, f"holds {len(found)} checkpoints: " + ", ".join(e.name for e in found),
                              "give one of them")
    return analyse_checkpoint(found[0].checkpoint, found[0].name, base_config, scan, options)


# -- batch ------------------------------------------------------------------------------------


def analysis_dirs(entry: ModelEntry, output_dir: str) -> tuple[str, str]:
    """(where the spec puts the analysis, the fallback under --output_dir)."""
    fallback = os.path.join(output_dir, entry.name.replace("/", os.sep), "analysis")
    if os.path.isdir(entry.path) and not in_hf_cache(entry.path):  # never write into a cache we do not own
        primary = os.path.join(entry.path, "analysis", entry.analysis_subdir) if entry.analysis_subdir \
            else os.path.join(entry.path, "analysis")
    else:
        primary = fallback
    return primary, fallback


def analyse_entry(entry: ModelEntry, output_dir: str, base: ModelAnalysis | None, force: bool,
                  scan: ScanOptions | None = None, options: ComputeOptions | None = None) -> ModelResult:
    if entry.error:
        return ModelResult(entry, "error", entry.error)
    if entry.skip_reason:
        return ModelResult(entry, "skipped", entry.skip_reason)
    primary, fallback = analysis_dirs(entry, output_dir)
    try:
        analysis, found_in = None, None
        if not force:
            base_config = base.config if base else None
            for folder in (primary, fallback):
                analysis = _reuse(entry, folder, base_config)
                if analysis is not None and scan is not None and analysis.structure.contents is None:
                    analysis = None  # reused only if it already holds what --sparsity asks for
                if analysis is not None:
                    found_in = folder
                    break
        reused = analysis is not None
        if reused:
            structure = with_compute(analysis.structure, options)
            if structure is not analysis.structure:  # other --seq_len, --context, ...: the files get the new figures
                analysis, reused = analysis.replace(structure=structure), False
        if reused and base is None:
            # Nothing new to say: the files on disk (and a comparison an earlier run made against a base)
            # stay as they are, one coherent set.
            return ModelResult(entry, "analysed", "", analysis, None, found_in, True)
        if analysis is None:
            analysis = analyse_checkpoint(entry.checkpoint, entry.name, base.config if base else None, scan, options)
        comparison = None
        if base is not None:
            from .compare import compare  # only with --base_model

            comparison = compare(base.structure, analysis.structure)
    except CheckpointError as error:
        return ModelResult(entry, "error", error.line())
    except Exception as error:  # a bug of ours must not take the rest of the batch down with this model
        return ModelResult(entry, "error", f"{entry.checkpoint.path}: internal error {type(error).__name__}: "
                                           f"{str(error)[:200]} (please report it with this line)")
    notes = []
    try:
        written = write_analysis(primary, analysis, comparison, reused)
    except OSError:
        try:
            written = write_analysis(fallback, analysis, comparison, reused)
        except Exception as error:  # noqa: BLE001 - one line for this model; the batch goes on
            return ModelResult(entry, "error", f"{fallback}: cannot write the analysis: "
                                               f"{getattr(error, 'strerror', None) or error} (choose a writable --output_dir)")
        notes.append(f"model folder not writable: analysis written to {fallback}")
    except Exception as error:  # noqa: BLE001
        return ModelResult(entry, "error", f"{primary}: cannot write the analysis: {type(error).__name__}: {error}")
    return ModelResult(entry, "analysed", "", analysis, comparison, written, reused, tuple(notes))


def write_analysis(folder: str, analysis: ModelAnalysis, comparison: Comparison | None, reused: bool = False) -> str:
    findings = [finding.line() for finding in analysis.findings]
    data = structure_to_dict(analysis.structure)
    data["checkpoint"] = {"kind": analysis.checkpoint.kind, "format": analysis.format,
                          "path": analysis.checkpoint.path if analysis.checkpoint.origin is not None
                          else os.path.abspath(analysis.checkpoint.path)}
    data["security_findings"] = [{"file": f.file, "what": f.what, "detail": f.detail} for f in analysis.findings]
    data["source"] = analysis.source
    write_json(os.path.join(folder, STRUCTURE_FILE), data)
    if comparison is not None:
        write_json(os.path.join(folder, COMPARISON_FILE), comparison_to_dict(comparison))
    elif not reused and os.path.exists(os.path.join(folder, COMPARISON_FILE)):
        os.unlink(os.path.join(folder, COMPARISON_FILE))  # compared a checkpoint that has since changed
    write_atomic(os.path.join(folder, SUMMARY_FILE),
                 structure_summary(analysis.structure, comparison, analysis.checkpoint.kind, findings,
                                   analysis.checkpoint.path))
    return folder


def _reuse(entry: ModelEntry, folder: str, base_config: dict | None) -> ModelAnalysis | None:
    """The analysis on disk, if this version made it from the same, unchanged files (and, where the
    base config decided something, from the same base config)."""
    path = os.path.join(folder, STRUCTURE_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        source = data.get("source") or {}
        current = fingerprint(entry.checkpoint)
        if any(source.get(key) != value for key, value in current.items()) or data.get("model_name") != entry.name:
            return None
        if "compute" not in data:
            return None  # written before the compute figures existed
        structure = structure_from_dict(data)
        if _depends_on_base(structure) and source.get("base_config") != config_digest(base_config):
            return None
        findings = tuple(SecurityFinding(**finding) for finding in data.get("security_findings", []))
        config = None if entry.checkpoint.origin is not None else load_config(entry.checkpoint.config_file)
        return ModelAnalysis(structure, entry.checkpoint, data["checkpoint"]["format"], config, findings,
                             data["source"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CheckpointError):
        return None  # anything unexpected on disk: analyse again
