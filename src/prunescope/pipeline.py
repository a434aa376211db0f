"""The stages joined: discover -> read -> interpret -> measure -> compare -> report, for one model or a batch.

Functions here hold no state between calls; everything a run needs travels in its arguments.
"""

from __future__ import annotations

import json
import os

from . import __version__
from .compare import Comparison
from .contents import measure_layers
from .discover import Checkpoint, ModelEntry, examine
from .readers import read_tensor_index, shard_paths
from .report import comparison_to_dict, structure_from_dict, structure_summary, structure_to_dict, write_json, write_atomic
from .slicing import describe_slicing
from .structure import ModelStructure, interpret
from .tensors import CheckpointError, SecurityFinding
from .records import Record

STRUCTURE_FILE = "model_structure.json"
COMPARISON_FILE = "model_comparison.json"
SUMMARY_FILE = "structure_summary.txt"


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


def load_config(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise CheckpointError(path, f"cannot read: {error.strerror or error}", "check permissions") from None
    except ValueError:
        raise CheckpointError(path, "config is not valid JSON", "fix or remove it") from None
    return data if isinstance(data, dict) else None


def fingerprint(checkpoint: Checkpoint) -> dict:
    """Sizes and modification times of every file the analysis reads."""
    paths = list(checkpoint.weight_files)
    for path in checkpoint.weight_files:
        if path.endswith(".index.json"):
            try:
                paths += shard_paths(path)
            except CheckpointError:
                pass  # reading the checkpoint will say what is wrong with its index
    paths += [path for path in (checkpoint.config_file, checkpoint.slicing_config) if path]
    files = []
    for path in paths:
        try:
            info = os.stat(path)
            files.append({"path": os.path.realpath(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns})
        except OSError:
            files.append({"path": os.path.realpath(path), "size": None, "mtime_ns": None})
    return {"prunescope_version": __version__, "files": files}


def config_digest(config: dict | None) -> str | None:
    """A short checksum of a config, to tell whether an analysis used the same base config."""
    if not config:
        return None
    import zlib

    return f"{zlib.crc32(json.dumps(config, sort_keys=True, default=str).encode()):08x}"


def _depends_on_base(structure: ModelStructure) -> bool:
    # Only head_dim can come from the base config (when the model's own config does not give it).
    return structure.head_dim_source.startswith("base config") or structure.head_dim_source == "unknown"


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
        from .scan_ray import connect, describe_cluster

        connect(address)
        return ScanOptions(progress=progress, executor="ray", address=address), describe_cluster()
    from .scan import choose_device  # numpy (and maybe torch) only when contents are scanned

    options = ScanOptions(device=choose_device(device), progress=progress)
    return options, options.device


def analyse_checkpoint(checkpoint: Checkpoint, name: str, base_config: dict | None = None,
                       scan: ScanOptions | None = None) -> ModelAnalysis:
    """Read, interpret and measure one checkpoint. Raises CheckpointError with a one-line reason."""
    source = {**fingerprint(checkpoint), "base_config": config_digest(base_config)}
    index = read_tensor_index(checkpoint.weight_files)
    config = load_config(checkpoint.config_file) or index.embedded_config
    try:
        structure = interpret(index, name, config, base_config)
    except CheckpointError as error:
        if not index.findings:
            raise
        # Not a model we recognise, but what its pickle asked for must still reach the user.
        found = ", ".join(dict.fromkeys(finding.what for finding in index.findings))
        raise CheckpointError(error.path, f"{error.problem}; SECURITY: it references {found} (nothing was run)",
                              error.hint) from None
    if checkpoint.kind == "slicegpt":
        slicing = load_config(checkpoint.slicing_config) or {}
        structure = describe_slicing(structure, index, slicing, checkpoint.slicing_config)
    structure = measure_layers(structure, index)
    if scan is not None:
        structure = _scan_contents(structure, index, scan)
    return ModelAnalysis(structure, checkpoint, index.format, config, index.findings, source)


def _scan_contents(structure: ModelStructure, index, options: ScanOptions) -> ModelStructure:
    from .scan import apply_contents, scan_tensors

    skipped = set(structure.buffers)
    tensors = [t for t in index.tensors if t.alias_of is None and t.name not in skipped]
    bar = None
    if options.progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(t.numel * t.itemsize for t in tensors), unit="B", unit_scale=True,
                   desc=f"scanning {structure.model_name}", leave=False)
    try:
        # Fused projections (Phi-3) are split into q/k/v and gate/up by rows: count their groups per row.
        fused = frozenset(t.name for t in tensors if t.name.endswith(("qkv_proj.weight", "gate_up_proj.weight")))
        progress = bar.update if bar else None
        if options.executor == "ray":
            from .scan_ray import scan_tensors_ray

            contents = scan_tensors_ray(tensors, fused, progress, structure.model_name, options.address,
                                        options.unit_bytes)
        else:
            contents = scan_tensors(tensors, options.device, options.workers, progress, per_row_groups=fused)
    finally:
        if bar is not None:
            bar.close()
    return apply_contents(structure, contents)


def analyse_path(path: str, base_config: dict | None = None, scan: ScanOptions | None = None) -> ModelAnalysis:
    """A single model given by path (a folder or a checkpoint file), e.g. the base model or `inspect PATH`."""
    name = os.path.basename(os.path.normpath(path))
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
    return analyse_checkpoint(found[0].checkpoint, found[0].name, base_config, scan)


# -- batch ------------------------------------------------------------------------------------


def analysis_dirs(entry: ModelEntry, output_dir: str) -> tuple[str, str]:
    """(where the spec puts the analysis, the fallback under --output_dir)."""
    fallback = os.path.join(output_dir, entry.name.replace("/", os.sep), "analysis")
    if os.path.isdir(entry.path):
        primary = os.path.join(entry.path, "analysis", entry.analysis_subdir) if entry.analysis_subdir \
            else os.path.join(entry.path, "analysis")
    else:
        primary = fallback
    return primary, fallback


def analyse_entry(entry: ModelEntry, output_dir: str, base: ModelAnalysis | None, force: bool,
                  scan: ScanOptions | None = None) -> ModelResult:
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
        if reused and base is None:
            # Nothing new to say: the files on disk (and a comparison an earlier run made against a base)
            # stay as they are, one coherent set.
            return ModelResult(entry, "analysed", "", analysis, None, found_in, True)
        if analysis is None:
            analysis = analyse_checkpoint(entry.checkpoint, entry.name, base.config if base else None, scan)
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
                          "path": os.path.abspath(analysis.checkpoint.path)}
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
        structure = structure_from_dict(data)
        if _depends_on_base(structure) and source.get("base_config") != config_digest(base_config):
            return None
        findings = tuple(SecurityFinding(**finding) for finding in data.get("security_findings", []))
        return ModelAnalysis(structure, entry.checkpoint, data["checkpoint"]["format"],
                             load_config(entry.checkpoint.config_file), findings, data["source"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CheckpointError):
        return None  # anything unexpected on disk: analyse again
