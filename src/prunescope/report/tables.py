"""The summary table, one row per model, as Markdown, CSV (plain numbers) and LaTeX (booktabs).

One `Table` record holds raw values; each format only decides how a value is written, so the three
files always agree. Scores: accuracies in % with two decimals, perplexities as they are; the best
value of each score column among the pruned models is bold (the base is the reference, not a
contender).
"""

from __future__ import annotations

import csv
import io
import re

from ..records import Record
from ..console import human_bytes, reduction
from .evals import Scoreboard
from .study import Study

# LaTeX's special characters in text mode, and < > | which the default OT1 font encoding misprints.
LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
WIDE_TABLE = 12  # columns past which the LaTeX table is scaled to the text width
# What Markdown (CommonMark, GitHub's tables, strikethrough and math) would read as markup or HTML in
# a model or task name; `_` only where it could start or end emphasis, so `Wanda_2:4` stays as it is.
MARKDOWN_SPECIAL = re.compile(r"[\\`*~<>\[\]|$&]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


class Column(Record):
    key: str  # the CSV header
    title: str  # the header in Markdown, LaTeX and HTML
    style: str  # "text", "params", "change", "count", "share", "bits", "bytes" or "score"
    best: str | None = None  # "max" / "min": the best value is bold
    percent: bool = False  # a score shown x100
    subtitle: str = ""  # under the title: the metric


class Table(Record):
    columns: tuple  # Column
    rows: tuple  # one tuple of raw values per model (None: unknown)
    roles: tuple  # each row's model role ("base", "pruned", "results")
    notes: tuple  # sentences for the caption and below the table


# -- building -----------------------------------------------------------------------------------


def summary_table(study: Study, board: Scoreboard) -> Table:
    compared = any(model.reduction_ratio is not None for model in study.models if model.role == "pruned")
    columns = [Column("model", "Model", "text"), Column("kind", "Kind", "text"),
               Column("total_params", "Params", "params")]
    if compared:  # without a base there is nothing to be reduced from
        columns.append(Column("reduction_ratio", "vs base", "change"))
    columns += [Column("num_layers", "Layers", "count"), Column("attention_params", "Attention", "params"),
                Column("mlp_params", "MLP", "params"), Column("embedding_params", "Embedding", "params")]
    # SliceGPT's shortcut rotations (and tensors no family claims) are real parameters: without their
    # column the parts would not add up to Params.
    other = any(model.other_params for model in study.models)
    if other:
        columns.append(Column("other_params", "Other", "params"))
    # Content scan: shapes say nothing of zeros inside them, so a 50% Wanda model has the base's
    # Params; what it really keeps is its nonzero count.
    scanned = any(model.sparsity is not None for model in study.models)
    if scanned:
        columns += [Column("nonzero_params", "Nonzero", "params"), Column("sparsity", "Sparsity", "share")]
    quantized = any(model.quantization for model in study.models)
    if quantized:  # what each parameter costs on disk, beside how many there are
        columns += [Column("quantization", "Format", "text"), Column("bits_per_param", "Bits/param", "bits")]
    computed = next((model.compute_options for model in study.models if model.prefill_macs is not None), None)
    if computed:
        columns.append(Column("prefill_macs", "MACs", "params", subtitle=f"S={computed.get('seq_len')}"))
        if compared:
            columns.append(Column("prefill_flops_reduction_ratio", "MACs vs base", "change"))
        columns.append(Column("memory_bytes", "Memory", "bytes", subtitle=f"L={computed.get('context')}"))
    for task in board.columns:
        columns.append(Column(f"{task.task}/{task.metric}", task.task, "score",
                              "max" if task.higher_is_better else "min", task.percent, task.metric))
    if board.average_over:
        columns.append(Column("average", "Average", "score", "max", True, "mean"))
    rows = []
    for model in study.models:
        row = [model.name, model.kind, model.total_params] + ([model.reduction_ratio] if compared else []) + [
            model.num_layers, model.attention_params, model.mlp_params, model.embedding_params]
        if other:
            row.append(model.other_params)
        if scanned:
            row += [model.nonzero_params, model.sparsity]
        if quantized:
            row += [model.quantization, model.bits_per_param]
        if computed:
            row += [model.prefill_macs] + ([model.prefill_flops_reduction_ratio] if compared else []) + [
                model.memory_bytes]
        row += [board.values.get(model.name, {}).get(task.task) for task in board.columns]
        if board.average_over:
            row.append(board.averages.get(model.name))
        rows.append(tuple(row))
    table = Table(columns=tuple(columns), rows=tuple(rows), roles=tuple(model.role for model in study.models),
                  notes=())
    return table.replace(notes=table_notes(study, board, scanned, other, bold=bool(best_cells(table)), computed=computed))


COMPUTE_NOTE = ("MACs: multiply-accumulates of a prefill of S tokens at batch 1 (FLOPs = 2 x MACs), counted as torch's "
                "FlopCounterMode counts an eager forward: every matrix product (linear weights without biases, "
                "attention QKᵀ and A·V over the full S x S rectangle with the query heads, the LM head on every "
                "position), nothing elementwise. Zeroed and 2:4 weights keep their dense MACs (the savings need "
                "sparse kernels).")


def table_notes(study: Study, board: Scoreboard, scanned: bool, other: bool, bold: bool,
                computed: dict | None = None) -> tuple:
    notes = []
    if study.base_name and any(model.reduction_ratio is not None for model in study.models if model.role == "pruned"):
        notes.append(f"vs base: change in total parameters against {study.base_name}.")
    notes.append("Attention and MLP: all layers; Embedding: input embeddings, an untied LM head and position "
                 "embeddings.")
    if other:
        notes.append("Other: SliceGPT's shortcut rotations and tensors outside attention, MLP, embeddings and norms.")
    if scanned:
        notes.append("Nonzero: parameters that are not zero; Sparsity: share of parameters that are zero "
                     "(content scan).")
    if any(model.quantization for model in study.models):
        notes.append("Format: how quantized models store their weights (parameters are the dense model's); "
                     "Bits/param: tensor data bits per parameter, scales and zero points included.")
    if computed:
        notes.append(COMPUTE_NOTE + f" Memory: weights + KV cache at batch {computed.get('batch')} x context L "
                     "tokens (no activations).")
    if board.columns:
        percent = [column.task for column in board.columns if column.percent]
        notes.append("Scores" + (" in %" if percent else "") + ": " + "; ".join(board.notes) + ".")
    if bold:
        notes.append("Best score among the pruned models in bold.")
    return tuple(notes)


# -- writing values -----------------------------------------------------------------------------


format_change = reduction  # a reduction ratio as a signed change in size, as the console shows it


def format_params(count: int | None) -> str:
    """8030261248 -> '8.03B', 68700000 -> '68.7M', 158528 -> '159K': three significant digits."""
    if count is None:
        return "-"
    for scale, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(count) >= scale * 0.9995:  # 999.6M is 1.00B, not 1000M
            value = count / scale
            if round(abs(value), 2) < 10:
                return f"{value:.2f}{suffix}"
            if round(abs(value), 1) < 100:
                return f"{value:.1f}{suffix}"
            return f"{value:.0f}{suffix}"
    return str(count)


def format_cell(column: Column, value) -> str:
    """The text shown for a value (the CSV keeps the raw value)."""
    if value is None:
        return "-"
    if column.style == "params":
        return format_params(value)
    if column.style == "change":
        return format_change(value)
    if column.style == "share":
        return f"{value * 100:.1f}%"
    if column.style == "bits":
        return f"{value:.2f}"
    if column.style == "bytes":
        return human_bytes(value)
    if column.style == "score":
        return f"{value * 100:.2f}" if column.percent else f"{value:.2f}"
    return str(value)


def best_cells(table: Table) -> set[tuple[int, int]]:
    """(row, column) of each score column's best shown value among the pruned models (ties all bold);
    nothing is bold where fewer than two pruned models have a value."""
    bold = set()
    for index, column in enumerate(table.columns):
        if column.best is None:
            continue
        contenders = [(number, row[index]) for number, (row, role) in enumerate(zip(table.rows, table.roles))
                      if role != "base" and row[index] is not None]
        if len(contenders) < 2:
            continue
        shown = {number: float(format_cell(column, value)) for number, value in contenders}
        best = (max if column.best == "max" else min)(shown.values())
        bold.update((number, index) for number, value in shown.items() if value == best)
    return bold


# -- formats ------------------------------------------------------------------------------------


def markdown_escape(text: str) -> str:
    return MARKDOWN_SPECIAL.sub(lambda match: "\\" + match.group(), str(text))


def to_markdown(table: Table) -> str:
    bold = best_cells(table)

    def header(column: Column) -> str:
        return markdown_escape(column.title + (f" ({column.subtitle})" if column.subtitle else ""))

    def cell(number: int, index: int, value) -> str:
        text = markdown_escape(format_cell(table.columns[index], value))
        return f"**{text}**" if (number, index) in bold else text

    lines = ["| " + " | ".join(header(column) for column in table.columns) + " |",
             "|" + "|".join(":---" if column.style == "text" else "---:" for column in table.columns) + "|"]
    for number, row in enumerate(table.rows):
        lines.append("| " + " | ".join(cell(number, index, value) for index, value in enumerate(row)) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(markdown_escape(note) for note in table.notes) + "\n"


def to_csv(table: Table) -> str:
    """Plain numbers (exact parameter counts, ratios and scores as 0-1 fractions), for pandas."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["role"] + [column.key for column in table.columns])
    for role, row in zip(table.roles, table.rows):
        writer.writerow([role] + ["" if value is None else repr(value) if isinstance(value, float) else value
                                  for value in row])
    return stream.getvalue()


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(character, character) for character in str(text))


def latex_cell(column: Column, value) -> str:
    if value is None:
        return "--"
    text = latex_escape(format_cell(column, value))
    if column.style in ("change", "score") and text.startswith("-"):
        text = "$-$" + text[1:]  # a minus sign, not a hyphen
    elif column.style == "change" and text.startswith("+"):
        text = "$+$" + text[1:]
    return text


def to_latex(table: Table, label: str = "tab:pruned-models") -> str:
    bold = best_cells(table)
    columns = table.columns
    spec = "".join("l" if column.style == "text" else "r" for column in columns)
    title_row = " & ".join(latex_escape(column.title) for column in columns) + r" \\"
    lines = [r"% Written by prunescope report. Needs \usepackage{booktabs}"
             + (r" and \usepackage{graphicx} (the table is scaled to the text width)." if len(columns) > WIDE_TABLE
                else "."),
             r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + latex_escape(" ".join(table.notes)) + "}", r"\label{" + label + "}"]
    tabular = [r"\begin{tabular}{@{}" + spec + "@{}}", r"\toprule", title_row]
    if any(column.subtitle for column in columns):
        tabular.append(" & ".join(r"{\scriptsize " + latex_escape(column.subtitle) + "}" if column.subtitle else ""
                                  for column in columns) + r" \\")
    tabular.append(r"\midrule")
    for number, (row, role) in enumerate(zip(table.rows, table.roles)):
        cells = []
        for index, value in enumerate(row):
            text = latex_cell(columns[index], value)
            cells.append(r"\textbf{" + text + "}" if (number, index) in bold else text)
        tabular.append(" & ".join(cells) + r" \\")
        if role == "base" and number + 1 < len(table.rows):
            tabular.append(r"\midrule")  # the reference apart from the contenders
    tabular += [r"\bottomrule", r"\end{tabular}"]
    if len(columns) > WIDE_TABLE:
        tabular = [r"\resizebox{\linewidth}{!}{%"] + tabular + ["}"]
    return "\n".join(lines + tabular + [r"\end{table}"]) + "\n"


# effective_* (heads, KV heads and channels not zeroed in place), nonzero and sparsity come from the
# content scan (--sparsity): empty cells for layers that were not scanned.
LAYER_FIELDS = ("layer_idx", "base_layer_idx", "total", "attention", "mlp", "norm", "shortcut", "other",
                "num_heads", "effective_heads", "num_kv_heads", "effective_kv_heads", "intermediate_size",
                "effective_intermediate_size", "is_zero_layer", "nonzero", "sparsity",
                "base_total", "base_attention", "base_mlp", "prefill_flops", "prefill_attention_projections",
                "prefill_attention_core", "prefill_mlp", "prefill_shortcut", "base_prefill_flops")


def layers_csv(study: Study) -> str:
    """Every model's layers in one long table (model, role, then the layer's fields), for pandas."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(("model", "role") + LAYER_FIELDS)
    for model in study.models:
        for layer in model.layers:
            writer.writerow([model.name, model.role] + ["" if getattr(layer, field) is None else getattr(layer, field)
                                                        for field in LAYER_FIELDS])
    return stream.getvalue()
