"""Everything the report shows, read from disk into records: the batch file, each model's JSON
analysis, and the evaluation results found in the models' folders. Never a checkpoint.

Which results belong to the base model. The base is usually evaluated once and its scores kept in a
folder of their own under --models_dir, which the batch skips as "only evaluation results". A
researcher expects those scores on the base's row, so a results-only folder is given to a model
(the base or a pruned one) when:
  1. its name is the model's name, compared case-insensitively, alone or with an evaluation word
     before or after it (`Llama-3-8B`, `Llama-3-8B-eval`, `Llama-3-8B_results`, `lm-eval_Llama-3-8B`);
     the base's name is the basename of the batch's --base_model, else the comparisons' original_name;
  2. otherwise, every results file in it names that model as the one evaluated (the harness's
     `config.model_args` `pretrained=.../Llama-3-8B`, or `model_name`);
  3. or `--base_results NAME` names it (a folder under --models_dir, or a path) as the base's.
A folder matching no model keeps its own row (results, no structure) rather than vanishing. Results
inside a model's own folder are that model's; the base's own folder (--base_model) is searched too.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

from ..console import encoding_name
from ..records import Record
from ..schema import BATCH_FILE, COMPARISON_FILE, STRUCTURE_FILE
from .evals import EvalError, find_results_files, newest_per_task, read_results_file


# Words that say "the evaluation of" rather than "a variant of" a model, in a results folder's name.
EVAL_WORDS = {"eval", "evals", "evaluation", "evaluations", "result", "results", "lmeval", "lm_eval",
              "lm_evaluation_harness", "lm_eval_harness", "harness", "scores", "benchmark", "benchmarks"}
SEPARATORS = "-_. "


class StudyError(Exception):
    """Nothing to report on; `str()` is one line saying what to do."""


class LayerRow(Record):
    layer_idx: int
    base_layer_idx: int | None  # the base layer it came from (None: unknown, or no base)
    total: int
    attention: int
    mlp: int
    norm: int
    shortcut: int = 0  # SliceGPT's rotations
    other: int = 0
    num_heads: int | None = None
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    # Content scan (--sparsity) only: heads, KV heads and MLP channels left once those zeroed in place
    # are discounted, and nonzero parameters (the layer's, its attention's, its MLP's).
    effective_heads: int | None = None
    effective_kv_heads: int | None = None
    effective_intermediate_size: int | None = None
    is_zero_layer: bool | None = False
    nonzero: int | None = None
    sparsity: float | None = None  # share of zeros
    attention_nonzero: int | None = None
    mlp_nonzero: int | None = None
    base_total: int | None = None
    base_attention: int | None = None
    base_mlp: int | None = None
    base_attention_nonzero: int | None = None  # when both models were scanned
    base_mlp_nonzero: int | None = None
    # FLOPs of a prefill (model_structure.json's per-layer compute), split; the base layer's total.
    prefill_flops: int | None = None
    prefill_attention_projections: int | None = None
    prefill_attention_core: int | None = None
    prefill_mlp: int | None = None
    prefill_shortcut: int | None = None
    base_prefill_flops: int | None = None


class ModelRow(Record):
    name: str
    role: str  # "base", "pruned", or "results" (evaluation results only, no analysis)
    kind: str | None = None
    path: str | None = None
    total_params: int | None = None
    reduction_ratio: float | None = None
    num_layers: int | None = None
    attention_params: int | None = None
    mlp_params: int | None = None
    embedding_params: int | None = None  # input embeddings, an untied LM head, position embeddings
    norm_params: int | None = None  # layer norms and the final norm
    other_params: int | None = None  # SliceGPT shortcuts and tensors no family claims
    nonzero_params: int | None = None  # when the contents were scanned
    sparsity: float | None = None
    nm_sparsity: str | None = None  # "2:4" when every linear weight complies
    quantization: str | None = None  # quantized checkpoints: the method and format, e.g. "gptq v1"
    bits_per_param: float | None = None  # tensor data bits per (logical) parameter
    layers: tuple = ()  # LayerRow
    base_num_layers: int | None = None
    warnings: tuple = ()  # one line each: stale config, security findings, guessed layer pairing, ...
    scores: dict = {}  # task -> evals.TaskResult
    # Compute (model_structure.json's `compute`): a prefill's MACs, memory, and what the KV cache adds per
    # token, per layer as (bytes per token, sliding window or None), for memory against context.
    prefill_macs: int | None = None
    prefill_flops_reduction_ratio: float | None = None
    decode_flops: int | None = None
    weight_bytes: int | None = None  # at the chosen --weight_dtype if any, else as stored
    memory_bytes: int | None = None
    kv_layers: tuple = ()
    compute_options: dict = {}  # seq_len, context, batch


class Unanalysed(Record):
    name: str
    status: str  # "skipped", "error", or "missing" (analysed, but its analysis is gone or unreadable)
    reason: str


class Study(Record):
    output_dir: str
    models_dir: str | None
    base_name: str | None
    models: tuple  # ModelRow: the base first, then the batch's order, then results-only folders
    unanalysed: tuple  # Unanalysed
    problems: tuple  # one line each, printed as warnings; the report goes on
    created: str


# -- reading JSON -------------------------------------------------------------------------------


def read_json(path: str):
    """The parsed file; OSError / ValueError propagate for the caller to word."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def problem_text(path: str, error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return f"{path}: missing"
    if isinstance(error, OSError):
        return f"{path}: cannot read: {error.strerror or error}"
    return f"{path}: not valid JSON ({error})"


# -- the batch ----------------------------------------------------------------------------------


def read_batch(output_dir: str, models_dir: str | None) -> dict:
    """batch_analysis_results.json; without one, the analyses found under `models_dir`."""
    path = os.path.join(output_dir, BATCH_FILE)
    try:
        batch = read_json(path)
        if not isinstance(batch, dict) or not isinstance(batch.get("models"), list):
            raise ValueError("no 'models' list")
        return relocate(batch, models_dir)
    except FileNotFoundError:
        if models_dir:
            return batch_from_folder(models_dir, output_dir)
        raise StudyError(f"{path}: missing: run `prunescope analyze --output_dir {output_dir}` first, "
                         "or give --models_dir") from None
    except (OSError, ValueError) as error:
        if models_dir:
            return batch_from_folder(models_dir, output_dir)
        raise StudyError(problem_text(path, error) + "; give --models_dir to read the analyses there") from None


def relocate(batch: dict, models_dir: str | None) -> dict:
    """Paths in the batch file are as given then (maybe relative to another folder, or moved since):
    with --models_dir, an entry whose path is gone is looked up there by name."""
    if not models_dir:
        return batch
    models = []
    for record in batch["models"]:
        record = dict(record)
        path = record.get("path") or ""
        if path and not os.path.exists(path):
            moved = os.path.join(models_dir, os.path.basename(os.path.normpath(path)) or record.get("name", ""))
            if os.path.exists(moved):
                if record.get("analysis_dir", "").startswith(path):
                    record["analysis_dir"] = moved + record["analysis_dir"][len(path):]
                record["path"] = moved
        models.append(record)
    return {**batch, "models": models}


def batch_from_folder(models_dir: str, output_dir: str) -> dict:
    """What the batch file would say, from the `analysis/` folders under `models_dir`."""
    try:
        names = sorted(name for name in os.listdir(models_dir) if not name.startswith(".") and name != "analysis")
    except OSError as error:
        raise StudyError(f"{models_dir}: cannot list the models folder: {error.strerror or error}") from None
    records = []
    for name in names:
        path = os.path.join(models_dir, name)
        found = analysis_folders(path, os.path.join(output_dir, name, "analysis"))
        for label, folder in found:
            records.append({"name": name + (f"/{label}" if label else ""), "path": path, "status": "analysed",
                            "kind": None, "analysis_dir": folder})
        if not found:
            records.append({"name": name, "path": path, "status": "skipped", "kind": None,
                            "reason": "no analysis (not analysed, or not a model)"})
    return {"models_dir": models_dir, "base_model": None, "models": records}


def analysis_folders(path: str, fallback: str) -> list[tuple[str, str]]:
    """(label, folder) of each analysis of one entry: `analysis/`, or `analysis/<checkpoint>/` when
    the entry holds several checkpoints, else the fallback under --output_dir."""
    primary = os.path.join(path, "analysis")
    for folder in (primary, fallback):
        if os.path.isfile(os.path.join(folder, STRUCTURE_FILE)):
            return [("", folder)]
    found = []
    if os.path.isdir(primary):
        for sub in sorted(os.listdir(primary)):
            if os.path.isfile(os.path.join(primary, sub, STRUCTURE_FILE)):
                found.append((sub.replace("__", "/"), os.path.join(primary, sub)))
    return found


# -- one analysed model -------------------------------------------------------------------------


def layer_rows(structure: dict, comparison: dict | None) -> tuple:
    compared = {layer["layer_idx"]: layer for layer in (comparison or {}).get("layers", [])}
    rows = []
    for layer in structure["layers"]:
        attention, mlp = layer["attention"], layer["mlp"]
        base = compared.get(layer["layer_idx"], {})
        base_attention, base_mlp = base.get("attention") or {}, base.get("mlp") or {}
        rows.append(LayerRow(
            layer_idx=layer["layer_idx"], base_layer_idx=base.get("original_layer_idx"), total=layer["total"],
            attention=attention["total"], mlp=mlp["total"], norm=layer.get("norm", 0) or 0,
            shortcut=layer.get("shortcut", 0) or 0, other=layer.get("other", 0) or 0,
            num_heads=attention.get("num_heads"), num_kv_heads=attention.get("num_kv_heads"),
            intermediate_size=mlp.get("intermediate_size"), effective_heads=attention.get("effective_heads"),
            effective_kv_heads=attention.get("effective_kv_heads"),
            effective_intermediate_size=mlp.get("effective_intermediate_size"),
            is_zero_layer=layer.get("is_zero_layer"), nonzero=layer.get("nonzero"), sparsity=layer.get("sparsity"),
            attention_nonzero=attention.get("nonzero"), mlp_nonzero=mlp.get("nonzero"),
            base_total=original(base.get("total")), base_attention=original(base_attention.get("total")),
            base_mlp=original(base_mlp.get("total")), base_attention_nonzero=original(base_attention.get("nonzero")),
            base_mlp_nonzero=original(base_mlp.get("nonzero")), **layer_compute_fields(layer, base)))
    return tuple(rows)


def layer_compute_fields(layer: dict, compared: dict) -> dict:
    figures = layer.get("compute")
    if not isinstance(figures, dict):
        return {}
    prefill = figures.get("prefill") or {}
    return dict(prefill_flops=figures.get("prefill_flops"),
                prefill_attention_projections=prefill.get("attention_projections"),
                prefill_attention_core=prefill.get("attention_core"), prefill_mlp=prefill.get("mlp"),
                prefill_shortcut=prefill.get("shortcut"),
                base_prefill_flops=original((compared.get("compute") or {}).get("prefill_flops")))


def model_compute_fields(structure: dict, comparison: dict | None) -> dict:
    """The ModelRow's compute fields from model_structure.json (and the comparison's FLOPs kept)."""
    figures = structure.get("compute")
    if not isinstance(figures, dict):
        return {}
    kept = ((comparison or {}).get("compute") or {}).get("prefill_flops") or {}
    # The weights as the memory figure counts them (at --weight_dtype when given).
    weights = figures["memory_bytes"] - figures["kv_cache_bytes"] if "memory_bytes" in figures else None
    return dict(prefill_macs=figures.get("prefill_macs"), decode_flops=figures.get("decode_flops"),
                prefill_flops_reduction_ratio=kept.get("reduction_ratio"), weight_bytes=weights,
                memory_bytes=figures.get("memory_bytes"),
                kv_layers=tuple(((layer.get("compute") or {}).get("kv_cache_bytes_per_token") or 0,
                                 layer.get("attention_window")) for layer in structure["layers"]),
                compute_options={key: figures.get(key) for key in ("seq_len", "context", "batch")})


def original(change) -> int | None:
    return change.get("original") if isinstance(change, dict) else None


def embedding_bucket(structure: dict) -> int:
    """Input embeddings, position embeddings, and the LM head unless tied (a tied head is the
    embedding matrix, counted once as total_params counts it)."""
    head = 0 if structure.get("tied_embeddings") else structure.get("lm_head_params", 0)
    return structure["embedding_params"] + structure.get("position_embedding_params", 0) + head


def model_warnings(record: dict, structure: dict, comparison: dict | None, base_name: str | None) -> tuple:
    warnings = []
    for mismatch in structure.get("config_mismatches", []):
        where = f" in layers {mismatch['layers']}" if mismatch.get("layers") else ""
        warnings.append(f"stale config: {mismatch['field']} is {mismatch['config']} in config.json, "
                        f"{mismatch['actual']} in the tensors{where}")
    for finding in structure.get("security_findings", []):
        if isinstance(finding, dict):
            finding = f"{finding.get('file')}: {finding.get('what')} ({finding.get('detail')})"
        warnings.append(f"SECURITY: the pickle references code no checkpoint needs (not run): {finding}")
    slicing = structure.get("slicing") or {}
    warnings += [f"slicing config: {mismatch}" for mismatch in slicing.get("mismatches", [])]
    warnings += [f"note: {note}" for note in structure.get("notes", [])]
    warnings += [f"note: {note}" for note in record.get("notes", [])]
    if comparison is not None:
        matching = comparison.get("layer_matching", {})
        if "guess" in matching.get("note", ""):
            warnings.append(f"layer pairing: {matching['note']}")
        elif matching.get("removed_original_layers"):
            warnings.append(f"note: base layers {matching['removed_original_layers']} removed "
                            f"(paired by {matching.get('method')})")
        if base_name and comparison.get("original_name") != base_name:
            warnings.append(f"compared with {comparison.get('original_name')}, not with the base {base_name}")
    zero = [layer["layer_idx"] for layer in structure["layers"] if layer.get("is_zero_layer")]
    if zero:
        warnings.append(f"all-zero layers: {zero}")
    return tuple(warnings)


def load_model(record: dict, base_name: str | None, problems: list) -> tuple[ModelRow | None, dict | None, dict | None]:
    """The model's row, its structure and its comparison (raw, for rebuilding the base); a row of
    None (and a problem line) when its analysis is missing or unreadable."""
    name = record.get("name", "?")
    folder = record.get("analysis_dir") or ""
    path = os.path.join(folder, STRUCTURE_FILE)
    try:
        structure = read_json(path)
        layers = structure["layers"]
        buckets = dict(attention=sum(layer["attention"]["total"] for layer in layers),
                       mlp=sum(layer["mlp"]["total"] for layer in layers),
                       norm=sum(layer.get("norm", 0) for layer in layers) + structure.get("final_norm_params", 0),
                       other=sum((layer.get("other", 0) or 0) + (layer.get("shortcut", 0) or 0) for layer in layers)
                       + structure.get("other_params", 0),
                       embedding=embedding_bucket(structure))
        total = structure["total_params"]
    except (OSError, ValueError) as error:
        problems.append(f"{name}: analysis unusable ({problem_text(path, error)}); left out: re-run prunescope analyze")
        return None, None, None
    except (KeyError, TypeError) as error:
        problems.append(f"{name}: {path}: not a prunescope analysis (no {error}); left out: re-run prunescope analyze")
        return None, None, None
    comparison = None
    comparison_path = os.path.join(folder, COMPARISON_FILE)
    if os.path.exists(comparison_path):
        try:
            comparison = read_json(comparison_path)
            comparison["total_params"]["reduction_ratio"]  # noqa: B018 - checks the shape early
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"{name}: comparison unusable ({problem_text(comparison_path, error)}); shown without it")
            comparison = None
    warnings = model_warnings(record, structure, comparison, base_name)
    if sum(buckets.values()) != total:
        warnings += (f"the parts add up to {sum(buckets.values()):,}, not total_params {total:,}",)
    row = ModelRow(
        name=name, role="pruned", kind=record.get("kind") or structure.get("checkpoint", {}).get("kind"),
        path=record.get("path"), total_params=total,
        reduction_ratio=comparison["total_params"]["reduction_ratio"] if comparison else None,
        num_layers=structure.get("layer_summary", {}).get("num_layers", len(structure["layers"])),
        attention_params=buckets["attention"], mlp_params=buckets["mlp"], embedding_params=buckets["embedding"],
        norm_params=buckets["norm"], other_params=buckets["other"], nonzero_params=structure.get("nonzero_params"),
        sparsity=structure.get("sparsity"), nm_sparsity=structure.get("nm_sparsity"),
        **quantization_fields(structure),
        layers=layer_rows(structure, comparison), base_num_layers=original((comparison or {}).get("num_layers")),
        warnings=warnings, **model_compute_fields(structure, comparison))
    return row, structure, comparison


# -- the base model -----------------------------------------------------------------------------


def base_from_comparisons(name: str, compared: list[tuple[dict, dict]], path: str | None) -> ModelRow:
    """The base's row rebuilt from the comparisons with it (the batch does not write the base's own
    analysis): its totals, and each base layer that some pruned model was paired with."""
    if not compared:
        return ModelRow(name=name, role="base", kind="base", path=path, reduction_ratio=0.0,
                        warnings=("no comparison with the base on disk: only its evaluation results are known",))
    layers: dict[int, LayerRow] = {}
    for _, comparison in compared:
        for layer in comparison["layers"]:
            index = layer.get("original_layer_idx")
            if index is None or index in layers:
                continue
            attention, mlp = layer["attention"], layer["mlp"]
            total = original(layer["total"])
            shortcut = original(layer.get("shortcut")) or 0
            norm = original(layer.get("norm")) or 0
            nonzero = original(layer.get("nonzero"))
            layers[index] = LayerRow(
                layer_idx=index, base_layer_idx=index, total=total, attention=original(attention["total"]),
                mlp=original(mlp["total"]), norm=norm, shortcut=shortcut,
                other=total - original(attention["total"]) - original(mlp["total"]) - norm - shortcut,
                num_heads=original(attention.get("num_heads")), num_kv_heads=original(attention.get("num_kv_heads")),
                intermediate_size=original(mlp.get("intermediate_size")), is_zero_layer=None, nonzero=nonzero,
                sparsity=1 - nonzero / total if nonzero is not None and total else None,
                attention_nonzero=original(attention.get("nonzero")), mlp_nonzero=original(mlp.get("nonzero")),
                base_total=total, base_attention=original(attention["total"]), base_mlp=original(mlp["total"]),
                base_attention_nonzero=original(attention.get("nonzero")),
                base_mlp_nonzero=original(mlp.get("nonzero")), **base_layer_compute(layer))
    structure, first = compared[0]
    total = first["total_params"]["original"]
    # num_layers, embedding_params and lm_head_params are prunescope's additions to the original
    # tool's comparison schema: without them the base's sizes stay unknown.
    num_layers = original(first.get("num_layers"))
    embedding, head = original(first.get("embedding_params")), original(first.get("lm_head_params"))
    if embedding is not None and (head is not None or structure.get("tied_embeddings")):
        # Pruning never ties or unties the LM head, so the pruned model's tying is the base's.
        embedding += 0 if structure.get("tied_embeddings") else head
        embedding += unchanged_by_pruning(compared, "position_embedding_params") or 0
    else:
        embedding = None
    rows = tuple(layers[index] for index in sorted(layers))
    warnings, attention, mlp, norm, other = [], None, None, None, None
    layer_params = original(first.get("layer_params"))
    if num_layers is not None and len(rows) == num_layers and embedding is not None and layer_params is not None:
        attention = sum(row.attention for row in rows)
        mlp = sum(row.mlp for row in rows)
        norm = sum(row.norm for row in rows)
        rest = total - embedding - layer_params  # final norm, other tensors
        final_norm = unchanged_by_pruning(compared, "final_norm_params")
        if final_norm is not None and final_norm <= rest:
            norm += final_norm
            rest -= final_norm
        other = rest + sum(row.other + row.shortcut for row in rows)
    elif num_layers is not None and len(rows) != num_layers:
        missing = sorted(set(range(num_layers)) - set(layers))
        warnings.append(f"base layers {missing} are paired with no pruned layer: their sizes are unknown")
    nonzero = next((comparison["nonzero_params"]["original"] for _, comparison in compared
                    if comparison.get("nonzero_params")), None)
    return ModelRow(
        name=name, role="base", kind="base", path=path, total_params=total, reduction_ratio=0.0,
        num_layers=num_layers, attention_params=attention, mlp_params=mlp, embedding_params=embedding,
        norm_params=norm, other_params=other, nonzero_params=nonzero,
        sparsity=1 - nonzero / total if nonzero is not None and total else None,
        layers=rows, base_num_layers=num_layers, warnings=tuple(warnings),
        **base_compute(structure, first, rows))


def base_layer_compute(layer: dict) -> dict:
    figures = layer.get("compute") or {}
    fields = {name: original(figures.get(name)) for name in
              ("prefill_flops", "prefill_attention_projections", "prefill_attention_core", "prefill_mlp",
               "prefill_shortcut")}
    return {**fields, "base_prefill_flops": fields["prefill_flops"]} if fields["prefill_flops"] is not None else {}


def base_compute(structure: dict, comparison: dict, rows: tuple) -> dict:
    """The base's compute figures as the comparison gives them (its weights as stored)."""
    figures = comparison.get("compute") or {}
    if not figures.get("prefill_flops"):
        return {}
    own = structure.get("compute") or {}
    # Memory against context needs each layer's window; the comparison has the base's total per token, which
    # is enough where no layer slides.
    windowed = any(layer.get("attention_window") for layer in structure["layers"])
    per_token = original(figures.get("kv_cache_bytes_per_token"))
    kv_layers = ((per_token, None),) if per_token is not None and not windowed else ()
    return dict(prefill_macs=original(figures["prefill_flops"]) // 2, decode_flops=original(figures.get("decode_flops")),
                prefill_flops_reduction_ratio=0.0, memory_bytes=original(figures.get("memory_bytes")),
                weight_bytes=original(figures["memory_bytes"]) - original(figures["kv_cache_bytes"])
                if figures.get("memory_bytes") and figures.get("kv_cache_bytes") else None,
                kv_layers=kv_layers, compute_options={key: own.get(key) for key in ("seq_len", "context", "batch")})


def unchanged_by_pruning(compared: list[tuple[dict, dict]], field: str) -> int | None:
    """The base's final norm or position embeddings, where they can be known: models that kept the
    embedding width (so the hidden size) and were not sliced keep them as they were; they must all
    agree."""
    sizes = {structure.get(field) for structure, comparison in compared
             if not structure.get("slicing") and (comparison.get("embedding_params") or {}).get("reduced") == 0}
    return sizes.pop() if len(sizes) == 1 and None not in sizes else None


# -- which results belong to whom ---------------------------------------------------------------


def squeeze(text: str) -> str:
    return text.lower().replace("-", "_").replace(" ", "_").replace(".", "_")


def names_the_model(folder_name: str, model_name: str) -> bool:
    """`Llama-3-8B`, `Llama-3-8B-eval`, `lm_eval_Llama-3-8B` name Llama-3-8B's results;
    `Llama-3-8B-Instruct` does not (a different model)."""
    folder, model = folder_name.lower(), model_name.lower()
    if folder == model:
        return True
    for before, after in ((folder, model), (folder[::-1], model[::-1])):
        if before.startswith(after) and len(before) > len(after) and before[len(after)] in SEPARATORS:
            rest = before[len(after) + 1:]
            rest = rest if before is folder else rest[::-1]
            if squeeze(rest) in EVAL_WORDS:
                return True
    return False


def owner_of(folder_name: str, files: list, candidates: list[str]) -> tuple[str | None, str]:
    """(the model a results-only folder belongs to, or None; how that was decided)."""
    by_name = [name for name in candidates if names_the_model(folder_name, name)]
    if by_name:
        return max(by_name, key=len), "by its name"
    claimed = set()
    for results in files:
        named = {name.lower() for name in results.model_names}
        claimed.add(next((name for name in candidates if name.lower() in named), None))
    owner = claimed.pop() if len(claimed) == 1 else None
    return owner, "by the model its results files name"


def inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def read_all(paths: list[str], problems: list) -> list:
    files = []
    for path in paths:
        try:
            files.append(read_results_file(path))
        except EvalError as error:
            problems.append(str(error))
    return files


def model_results(rows: list[ModelRow], problems: list) -> dict[str, list]:
    """Results files inside each analysed model's folder. Several checkpoints in one folder (SliceGPT
    sparsities) share it: a file goes to the one whose name appears in its path or its model_args."""
    by_folder: dict[str, list[ModelRow]] = {}
    for row in rows:
        if row.path and os.path.isdir(row.path):
            by_folder.setdefault(os.path.realpath(row.path), []).append(row)
    owned: dict[str, list] = {}
    for folder, sharing in by_folder.items():
        for results in read_all(find_results_files(folder), problems):
            if len(sharing) == 1:
                owned.setdefault(sharing[0].name, []).append(results)
                continue
            relative = os.path.relpath(results.path, folder).lower()
            named = [row for row in sharing if row.name.split("/", 1)[-1].lower() in relative
                     or row.name.split("/", 1)[-1].lower() in {name.lower() for name in results.model_names}]
            if len(named) == 1:
                owned.setdefault(named[0].name, []).append(results)
            else:
                problems.append(f"{results.path}: {len(sharing)} models share this folder and the file names none of "
                                "them; left out (put it in a folder named after the model)")
    return owned


# -- the whole study ----------------------------------------------------------------------------


def load_study(output_dir: str, models_dir: str | None = None, base_results: str | None = None) -> Study:
    problems: list[str] = []
    batch = read_batch(output_dir, models_dir)
    base_model = batch.get("base_model")
    base_name = os.path.basename(os.path.normpath(base_model)) if base_model else None
    loaded, results_only, unanalysed = sort_records(batch["models"], base_name, problems)
    if base_name is None:  # no --base_model in the batch: the base the comparisons name
        names = Counter(comparison.get("original_name") for *_, comparison in loaded if comparison)
        base_name = names.most_common(1)[0][0] if names else None
    rows = model_rows(loaded, base_name, base_model, unanalysed)
    base = next((row for row in rows if row.role == "base"), None)
    results = own_results(rows, base, base_model, [models_dir, batch.get("models_dir")], problems)
    extra_rows, adopted = adopt_results_only(results_only, rows, base, base_results, results, unanalysed, problems)
    rows = [row.replace(scores=newest_per_task(results.get(row.name, [])),
                        warnings=row.warnings + tuple(adopted.get(row.name, ()))) for row in rows + extra_rows]
    return Study(output_dir=output_dir, models_dir=models_dir or batch.get("models_dir"), base_name=base_name,
                 models=tuple(rows), unanalysed=tuple(unanalysed), problems=tuple(problems),
                 created=time.strftime("%Y-%m-%d %H:%M"))


def sort_records(records: list, base_name: str | None, problems: list) -> tuple[list, list, list]:
    """(analysed: (record, row, structure, comparison)), skipped folders that may hold results, the rest."""
    loaded, results_only, unanalysed = [], [], []
    for record in records:
        if not isinstance(record, dict):
            continue
        status = record.get("status")
        if status == "analysed":
            loaded.append((record, *load_model(record, base_name, problems)))
        elif status == "skipped" and record.get("path") and os.path.isdir(record["path"]):
            results_only.append(record)
        else:
            unanalysed.append(Unanalysed(record.get("name", "?"), status or "?",
                                         record.get("error") or record.get("reason") or ""))
    return loaded, results_only, unanalysed


def model_rows(loaded: list, base_name: str | None, base_model: str | None, unanalysed: list) -> list[ModelRow]:
    """The analysed models' rows, the base's first: its own analysis when it was analysed as one of
    the models, else rebuilt from the comparisons with it."""
    rows, compared = [], []
    for record, row, structure, comparison in loaded:
        if row is None:
            unanalysed.append(Unanalysed(record.get("name", "?"), "missing", "analysis missing or unreadable"))
            continue
        if row.name == base_name:
            row = row.replace(role="base", reduction_ratio=0.0)
        elif comparison is not None and comparison.get("original_name") == base_name:
            compared.append((structure, comparison))
        rows.append(row)
    if base_name is not None and not any(row.role == "base" for row in rows):
        rows.insert(0, base_from_comparisons(base_name, compared, base_model))
    return sorted(rows, key=lambda row: row.role != "base")


def own_results(rows: list[ModelRow], base: ModelRow | None, base_model: str | None, models_dirs: list,
                problems: list) -> dict[str, list]:
    """Results inside each model's folder; the rebuilt base's folder is --base_model, searched
    without the folders of other models that may sit inside it."""
    searched = [row for row in rows if not (row is base and base_model and row.path == base_model)]
    results = model_results(searched, problems)
    if base is not None and base_model and base.path == base_model and os.path.isdir(base_model):
        nested = [folder for folder in [row.path for row in searched] + models_dirs
                  if folder and inside(folder, base_model) and not inside(base_model, folder)]
        results.setdefault(base.name, []).extend(read_all(
            [path for path in find_results_files(base_model) if not any(inside(path, folder) for folder in nested)],
            problems))
    return results


def adopt_results_only(folders: list, rows: list[ModelRow], base: ModelRow | None, base_results: str | None,
                       results: dict, unanalysed: list, problems: list) -> tuple[list[ModelRow], dict]:
    """Give each results-only folder to its model (see the module's docstring) or its own row.
    Adds to `results`; returns the extra rows and, per model, a note saying where scores came from."""
    chosen = [record for record in folders
              if base_results and (record.get("name") == base_results or inside(record["path"], base_results))]
    extra_rows, adopted = [], {}
    candidates = [row.name for row in rows]
    for record in folders:
        files = read_all(find_results_files(record["path"]), problems)
        if not files:
            unanalysed.append(Unanalysed(record.get("name", "?"), "skipped", record.get("reason", "")))
            continue
        owner, how = (base.name, "by --base_results") if base is not None and record in chosen else \
            owner_of(record["name"], files, candidates)
        if owner is None:
            extra_rows.append(ModelRow(name=record["name"], role="results", kind="results only", path=record["path"]))
            owner = record["name"]
        else:  # said on the model's row, so that a wrong match is seen
            adopted.setdefault(owner, []).append(f"note: scores from the results-only folder {record['name']} "
                                                 f"(matched {how})")
        results.setdefault(owner, []).extend(files)
    if base_results and not chosen:
        if base is not None and os.path.isdir(base_results):
            results.setdefault(base.name, []).extend(read_all(find_results_files(base_results), problems))
        else:
            problems.append(f"--base_results {base_results}: " + (
                "no such results folder (a name under --models_dir, or a path)" if base is not None
                else "no base model in this batch to give its scores to (run analyze with --base_model)"))
    return extra_rows, adopted


def quantization_fields(structure: dict) -> dict:
    """ModelRow's quantization and bits_per_param from model_structure.json's `quantization` section."""
    quantization = structure.get("quantization")
    if not isinstance(quantization, dict):
        return {}
    return {"quantization": encoding_name(quantization.get("method") or "", quantization.get("format") or ""),
            "bits_per_param": quantization.get("bits_per_param")}
