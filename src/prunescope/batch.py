"""`prunescope analyze`: the batch run, its console output and its batch-level files."""

from __future__ import annotations

import json
import os
import sys
import time

from . import __version__
from .discover import ModelEntry, discover_models, examine
from .locate import LocateError, Location, locate, names_remote_model, refuse_implicit_scan
from .atomic import write_json
from .console import encoding_name, experts_line, format_table, human, human_bytes, reduction, value_range, widths
from .compute import CONVENTION, ComputeOptions
from .pipeline import ModelResult, analyse_entry, analyse_reference, scan_options
from .schema import BATCH_FILE, COMPARISON_FILE, MODELS_SUMMARY_FILE, STRUCTURE_FILE
from .tensors import CheckpointError

RULE = "=" * 80
MODELS_IN_FLIGHT = 4  # with --executor ray: 4 x 16 units of 8B models keep a 64-CPU cluster busy


def run_batch(models_dir: str | None, base_model: str | None = None, output_dir: str = "baselines_analysis/",
              merge: bool = False, force: bool = False, include=(), exclude=(), extra_models=(),
              out=None, sparsity: bool = False, device: str = "auto", remote_scan: bool = False,
              options: ComputeOptions | None = None, executor: str = "local", address: str | None = None) -> int:
    """Analyse every model under `models_dir`; returns the exit status (1 when anything failed)."""
    out = out or sys.stdout
    say = lambda text="": print(text, file=out)  # noqa: E731
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        say(f"✗ error: --output_dir {output_dir} is a file, not a folder (choose a folder)")
        return 1
    # Models named by repo id or URL are found first: one that cannot be reached stops the run here.
    try:
        located = [locate(reference) for reference in extra_models if names_remote_model(reference)]
        base_location = locate(base_model) if base_model else None
    except LocateError as error:
        say(f"✗ error: {error.line()}")
        return 1
    refusal = refuse_implicit_scan([*located, base_location]) if sparsity and not remote_scan else None
    if refusal:
        say(f"✗ error: {refusal}")
        return 1
    extra_models = [reference for reference in extra_models if not names_remote_model(reference)]
    say(RULE)
    say(f"Scanning model folder: {models_dir}" if models_dir else "Scanning the models given with --model")
    say(RULE)
    say()
    try:
        outputs = _output_identities(output_dir)
        entries = [entry for entry in discover_models(models_dir, include, exclude, extra_models)
                   if not _is_our_output(entry.path, outputs)]
        entries += [entry for location in located for entry in _located_entries(location)]
    except OSError as error:
        say(f"✗ error: {models_dir}: cannot list the models folder: {error.strerror or error} "
            "(check the path given to --models_dir)")
        return 1
    for entry in entries:
        if entry.error:
            say(f"✗ error: {entry.name}: {entry.error}")
        elif entry.skip_reason:
            say(f"⊘ skipped: {entry.name} ({entry.skip_reason})")
        else:
            say(f"✓ model: {entry.name} (kind: {entry.checkpoint.kind})")
    found = [entry for entry in entries if entry.checkpoint is not None and not entry.error]
    say()
    say("Summary:")
    say(f"  - models to analyse: {len(found)}")
    slicegpt = sum(1 for entry in found if entry.checkpoint.kind == "slicegpt")
    if slicegpt:
        say(f"  - of which SliceGPT: {slicegpt}")
    say(f"  - skipped: {sum(1 for entry in entries if entry.skip_reason)}")
    if any(entry.error for entry in entries):
        say(f"  - errors: {sum(1 for entry in entries if entry.error)}")
    if not entries:
        say("  ⚠ nothing found" + (" matching --include/--exclude" if include or exclude else "")
            + ": check --models_dir (each entry directly under it is one model)")
    say()
    say(RULE)
    say(f"Analysing {len(found)} model(s) ({len(entries)} entries)")
    say(RULE)

    scan = None
    if sparsity:
        try:
            scan, where = scan_options(device, executor, address)
        except CheckpointError as error:
            say(f"✗ error: {error.line()}")
            return 1
        say(f"Content scan (--sparsity) on {where}")
    base = None
    base_error = None
    if base_model:
        try:
            base = analyse_reference(base_location, scan=scan, options=options)
            say(f"✓ base model: {base.structure.model_name} ({human(base.structure.total_params)} parameters, "
                f"{base.structure.num_layers} layers)")
        except CheckpointError as error:
            base_error = error.line()
            say(f"✗ base model: {base_error} -- continuing without comparisons")
    else:
        say("(no --base_model: structures only, no comparisons)")
    say()

    results: list[ModelResult] = []
    progress = _progress(len(entries))
    for number, result in enumerate(_analysed(entries, output_dir, base, force, scan, options), 1):
        results.append(result)
        line = _status_line(number, len(entries), result)
        if progress is not None:
            progress.update(1)
            progress.write(line, file=out)
        else:
            say(line)
    if progress is not None:
        progress.close()

    batch = {
        "timestamp": timestamp(),
        "models_dir": models_dir,
        "base_model": base_model,
        "base_model_error": base_error,
        "output_dir": output_dir,
        "prunescope_version": __version__,
        "models": [_batch_record(result) for result in results],
        "compute_convention": CONVENTION,
    }
    batch_path = os.path.join(output_dir, BATCH_FILE)
    say()
    say(RULE)
    try:
        write_json(batch_path, batch)
        say(f"✓ batch results saved: {batch_path}")
    except OSError as error:
        say(f"✗ error: {batch_path}: cannot write: {error.strerror or error} (choose a writable --output_dir)")
        base_error = base_error or "output not writable"
    if merge:
        summary_path = os.path.join(output_dir, MODELS_SUMMARY_FILE)
        try:
            write_json(summary_path, merge_results(results, models_dir))
            say(f"✓ merged summary saved: {summary_path}")
        except OSError as error:
            say(f"✗ error: {summary_path}: cannot write: {error.strerror or error}")
            base_error = base_error or "output not writable"
    say(RULE)
    say()
    say(closing_table(results))
    say()
    say(_next_steps(models_dir, output_dir, merge, results))
    failed = any(result.status == "error" for result in results) or base_error is not None
    return 1 if failed else 0


def _located_entries(location: Location) -> list[ModelEntry]:
    """A model named by repo id or URL: remote, or a snapshot in the Hugging Face cache."""
    if location.is_remote:
        return [ModelEntry(location.name, location.reference, location.checkpoint)]
    return examine(location.path, location.name)


def _analysed(entries, output_dir: str, base, force: bool, scan, options):
    """Each entry's ModelResult, in order. Locally one model at a time: its scan has every core. With
    --executor ray, MODELS_IN_FLIGHT models at once, so that the cluster has the units of several
    models to run: one 8B model is 16 units, and its slowest unit would leave the rest idle."""
    def analyse(entry):
        return analyse_entry(entry, output_dir, base, force, scan, options)

    if scan is None or scan.executor != "ray":
        yield from map(analyse, entries)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=MODELS_IN_FLIGHT) as pool:
        yield from pool.map(analyse, entries)


OUTPUT_NAMES = (BATCH_FILE, MODELS_SUMMARY_FILE, "tables", "plots", "report.html")


def _output_identities(output_dir: str) -> set[tuple[int, int]]:
    """(device, inode) of --output_dir and of what prunescope writes there, those that exist. Compared by
    identity, a symlink among the models that leads to our output is recognised with one stat, where
    comparing resolved paths walks every component of every path (os.path.realpath)."""
    identities = set()
    for path in (output_dir, *(os.path.join(output_dir, name) for name in OUTPUT_NAMES)):
        try:
            info = os.stat(path)
        except OSError:
            if path == output_dir:
                break  # no folder, nothing in it
            continue
        identities.add((info.st_dev, info.st_ino))
    return identities


def _is_our_output(path: str, outputs: set[tuple[int, int]]) -> bool:
    """`path` is --output_dir itself, or something prunescope writes there (when it sits among the models)."""
    if not outputs:
        return False
    try:
        info = os.stat(path)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) in outputs


def timestamp() -> str:
    """Local time like datetime's isoformat(timespec="seconds"), without importing datetime."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _progress(total: int):
    """A progress bar over the models, for people watching a terminal; none in pipelines and logs."""
    if total < 2 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # imported only when shown: it costs more start-up time than the analysis

    return tqdm(total=total, unit="model", file=sys.stderr, leave=False)


def _status_line(number: int, total: int, result: ModelResult) -> str:
    prefix = f"[{number}/{total}]"
    name = result.entry.name
    if result.status == "error":
        return f"{prefix} ✗ {name}: {result.message}"
    if result.status == "skipped":
        return f"{prefix} ⊘ {name}: skipped ({result.message})"
    structure = result.analysis.structure
    text = f"{prefix} ✓ {name}: {human(structure.total_params)} parameters, {structure.num_layers} layers"
    if structure.quantization is not None:
        text += f", {quantization_label(structure.quantization)}"
    if structure.contents is not None:
        text += f", sparsity {structure.contents.sparsity * 100:.1f}%"
        if structure.contents.nm_sparsity:
            text += f" ({structure.contents.nm_sparsity})"
    if result.comparison is not None:
        text += f", {reduction(result.comparison.total_params.reduction_ratio)} vs base"
        if result.comparison.nonzero_params is not None:
            text += f" ({reduction(result.comparison.nonzero_params.reduction_ratio)} nonzero)"
        for warning in result.comparison.warnings:
            text += f"\n    ⚠ is this the right base? {warning}"
    text += f" -> {result.analysis_dir}" + (" (up to date, reused)" if result.reused else "")
    for finding in result.analysis.findings:
        text += f"\n    ⚠ SECURITY {finding.line()}"
    for note in result.notes:
        text += f"\n    note: {note}"
    return text


def _batch_record(result: ModelResult) -> dict:
    entry = result.entry
    record = {"name": entry.name, "path": entry.path, "status": result.status,
              "kind": entry.checkpoint.kind if entry.checkpoint else None}
    if result.status != "analysed":
        record["reason" if result.status == "skipped" else "error"] = result.message
        return record
    structure = result.analysis.structure
    record.update({
        "checkpoint": result.analysis.checkpoint.path,
        "format": result.analysis.format,
        "analysis_dir": result.analysis_dir,
        "reused": result.reused,
        "total_params": structure.total_params,
        "num_layers": structure.num_layers,
        "reduction_ratio": result.comparison.total_params.reduction_ratio if result.comparison else None,
        **({"quantization": {"format": encoding_name(structure.quantization.method, structure.quantization.format),
                             "bits_per_param": structure.quantization.bits_per_param}} if structure.quantization else {}),
        "config_mismatches": len(structure.config_mismatches),
        "security_findings": [finding.line() for finding in result.analysis.findings],
        "notes": list(result.notes),
        **({"compute": compute_summary(structure.compute, result.comparison)} if structure.compute else {}),
    })
    return record


def compute_summary(figures, comparison=None) -> dict:
    """The few compute figures a batch-level file carries (model_structure.json has them all)."""
    summary = {"seq_len": figures.options.seq_len, "context": figures.options.context,
               "prefill_flops": figures.prefill_flops, "prefill_macs": figures.prefill_flops // 2,
               "decode_flops": figures.decode_flops, "kv_cache_bytes_per_token": figures.kv_cache_bytes_per_token,
               "weight_bytes": figures.weight_bytes, "memory_bytes": figures.memory_bytes}
    if comparison is not None and comparison.compute is not None:
        summary["prefill_flops_reduction_ratio"] = comparison.compute["prefill_flops"].reduction_ratio
        summary["kv_cache_reduction_ratio"] = comparison.compute["kv_cache_bytes_per_token"].reduction_ratio
    return summary


def merge_results(results: list[ModelResult], models_dir: str) -> dict:
    """models_summary.json, built from the per-model analyses on disk."""
    models = []
    for result in results:
        if result.status != "analysed":
            continue
        with open(os.path.join(result.analysis_dir, STRUCTURE_FILE), encoding="utf-8") as handle:
            structure = json.load(handle)
        comparison = None
        try:
            with open(os.path.join(result.analysis_dir, COMPARISON_FILE), encoding="utf-8") as handle:
                comparison = json.load(handle)
        except (OSError, ValueError):
            pass
        pruning = None
        if comparison is not None:
            pruning = {"original_params": comparison["total_params"]["original"],
                       "pruned_params": comparison["total_params"]["pruned"],
                       "reduction_ratio": comparison["total_params"]["reduction_ratio"],
                       "original_name": comparison["original_name"]}
        models.append({
            "name": structure["model_name"],
            "kind": structure.get("checkpoint", {}).get("kind"),
            "total_params": structure["total_params"],
            "num_layers": structure["layer_summary"]["num_layers"],
            "layer_params": structure["layer_summary"]["total_layer_params"],
            "embedding_params": structure["embedding_params"],
            "lm_head_params": structure["lm_head_params"],
            "pruning": pruning,
            **({"quantization": {key: structure["quantization"].get(key) for key in
                                 ("method", "format", "bits", "bits_per_param", "storage_bytes")}}
               if structure.get("quantization") else {}),
            **({"compute": {key: structure["compute"][key] for key in MERGED_COMPUTE}} if "compute" in structure else {}),
        })
    return {"timestamp": timestamp(), "models_dir": models_dir, "models": models, "compute_convention": CONVENTION}


MERGED_COMPUTE = ("seq_len", "context", "prefill_flops", "prefill_macs", "decode_flops", "kv_cache_bytes_per_token",
                  "weight_bytes", "memory_bytes")


def closing_table(results: list[ModelResult]) -> str:
    rows = [("model", "kind", "total params", "vs base", "layers", "heads", "intermediate", "MACs", "MACs vs base",
             "memory", "notes")]
    for result in results:
        entry = result.entry
        kind = entry.checkpoint.kind if entry.checkpoint else "-"
        if result.status != "analysed":
            rows.append((entry.name, kind, "-", "-", "-", "-", "-", "-", "-", "-",
                         result.status + ": " + _clip(result.message)))
            continue
        structure = result.analysis.structure
        layers = structure.layers
        notes = [structure.slicing["summary"]] if structure.slicing else []
        if structure.quantization is not None:
            notes.append(quantization_label(structure.quantization))
        if structure.contents is not None and (structure.contents.sparsity >= 0.0005 or structure.contents.nm_sparsity):
            notes.append(f"sparsity {structure.contents.sparsity * 100:.1f}%"
                         + (f" {structure.contents.nm_sparsity}" if structure.contents.nm_sparsity else ""))
        zero = [layer.layer_idx for layer in layers if layer.is_zero_layer]
        if zero:
            notes.append(f"zero layers {zero}")
        if structure.num_experts is not None:
            notes.append(experts_line(structure, result.comparison))
        if structure.config_mismatches:
            notes.append("config stale: " + ",".join(m["field"] for m in structure.config_mismatches))
        if structure.tied_embeddings:
            notes.append("tied embeddings")
        if result.analysis.findings:
            notes.append(f"SECURITY: {len(result.analysis.findings)} finding(s)")
        matching = result.comparison.layer_matching if result.comparison is not None else None
        if matching is not None and matching.removed_original_layers:
            removed = list(matching.removed_original_layers)
            if matching.method == "content":
                notes.append(f"removed base layers {removed} (matched by content)")
            else:
                notes.append(f"base layers {removed} unmatched; paired by {matching.method} (a guess)")
        if result.comparison is not None and result.comparison.warnings:
            notes.append("⚠ base differs: " + "; ".join(result.comparison.warnings))
        if result.reused:
            notes.append("reused")
        change = reduction(result.comparison.total_params.reduction_ratio) if result.comparison else "-"
        figures = structure.compute
        compute_change = result.comparison.compute if result.comparison is not None else None
        if compute_change is not None:
            notes += [note for note in result.comparison.compute_notes if "sparse kernels" in note]
        rows.append((entry.name, kind, human(structure.total_params), change, str(structure.num_layers),
                     value_range(layer.attention.num_heads for layer in layers),
                     value_range(width for layer in layers for width in widths(layer)),
                     human(figures.prefill_flops // 2) if figures else "-",
                     reduction(compute_change["prefill_flops"].reduction_ratio) if compute_change else "-",
                     human_bytes(figures.memory_bytes) if figures else "-", "; ".join(notes)))
    table = format_table(rows, left=(0, 1, 10))
    options = next((r.analysis.structure.compute.options for r in results
                    if r.status == "analysed" and r.analysis.structure.compute is not None), None)
    if options is not None:
        table += (f"\nMACs: prefill of {options.seq_len} tokens (FLOPs = 2 x MACs, as torch's FlopCounterMode counts "
                  f"an eager forward); memory: weights + KV cache at batch {options.batch} x context {options.context}")
    return table


def _clip(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _next_steps(models_dir: str, output_dir: str, merged: bool, results: list[ModelResult]) -> str:
    lines = [RULE, "Next steps:", RULE, ""]
    step = 1
    errors = [result for result in results if result.status == "error"]
    if errors:
        lines += [f"{step}. Fix the {len(errors)} model(s) marked ✗ above (details in "
                  f"{os.path.join(output_dir, BATCH_FILE)}), then run the same command again.", ""]
        step += 1
    where = f"--models_dir {models_dir}" if models_dir else "--model ..."
    if not merged:
        lines += [f"{step}. Merge all results:",
                  f"   prunescope analyze {where} --merge_results --output_dir {output_dir}", ""]
        step += 1
    analysed = [result for result in results if result.status == "analysed"]
    if analysed and all(result.comparison is None for result in analysed):
        lines += [f"{step}. Compare every model with the unpruned one:",
                  f"   prunescope analyze {where} --base_model /path/to/base --output_dir {output_dir}", ""]
        step += 1
    if analysed and all(result.analysis.structure.contents is None for result in analysed):
        lines += [f"{step}. Count zeros too (Wanda, SparseGPT, 2:4, heads zeroed in place): add --sparsity", ""]
        step += 1
    lines += [f"{step}. Tables, plots and an HTML report for the paper:",
              f"   prunescope report --output_dir {output_dir}", ""]
    step += 1
    if analysed:
        lines += [f"{step}. Look at one model layer by layer:",
                  f"   prunescope inspect {analysed[0].analysis.checkpoint.path}", ""]
    lines.append(RULE)
    return "\n".join(lines)


def quantization_label(quantization) -> str:
    """Short: "pack-quantized 4.61 bits/param"."""
    text = encoding_name(quantization.method, quantization.format)
    if quantization.bits_per_param is not None:
        text += f" {quantization.bits_per_param:.2f} bits/param"
    return text
