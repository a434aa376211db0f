"""report.html: one self-contained file (styles inline, images as data: URIs, no script, nothing
fetched), so that it opens from disk, travels by e-mail and prints. Collapsible sections are the
browser's own <details>.
"""

from __future__ import annotations

import base64
from html import escape

from .evals import Scoreboard
from .plots import Plot
from .study import ModelRow, Study
from .tables import Table, best_cells, format_cell, format_change, format_params

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta, .notes { color: #555; font-size: .92em; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: .25em .6em; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { border-bottom: 2px solid #444; vertical-align: bottom; } th small { font-weight: normal; color: #666; }
td.text, th.text { text-align: left; } tr.base td { background: #f3f6fa; }
.scroll { overflow-x: auto; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .92em; }
details { border: 1px solid #ddd; border-radius: 4px; margin: .5em 0; padding: .3em .8em; }
summary { cursor: pointer; font-weight: 600; } summary span { font-weight: normal; color: #555; }
ul.warnings li { color: #8a4b00; } ul.warnings li.security { color: #b00020; font-weight: 600; }
ul.warnings li.note { color: #555; }
ul.problems li { color: #b00020; }
"""


def render_html(study: Study, table: Table, board: Scoreboard, plots: list[Plot], problems: list[str]) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>prunescope report: {escape(study.base_name or study.output_dir)}</title>",
        f"<style>{STYLE}</style>", "</head>", "<body>",
        "<h1>Pruned models: structure and evaluation</h1>",
        f'<p class="meta">{len([m for m in study.models if m.role == "pruned"])} pruned model(s)'
        + (f", base <b>{escape(study.base_name)}</b>" if study.base_name else "")
        + (f", from {escape(study.models_dir)}" if study.models_dir else "")
        + f". Generated {escape(study.created)} by prunescope report from the analyses in "
        f"{escape(study.output_dir)}.</p>",
    ]
    if problems:
        parts += ["<h2>Problems</h2>", '<ul class="problems">']
        parts += [f"<li>{escape(problem)}</li>" for problem in problems]
        parts.append("</ul>")
    parts += ["<h2>Summary</h2>", '<div class="scroll">', table_html(table), "</div>",
              '<p class="notes">' + "<br>".join(escape(note) for note in table.notes) + "</p>"]
    if plots:
        parts.append("<h2>Plots</h2>")
        for plot in plots:
            data = base64.b64encode(plot.png).decode("ascii")
            # Shown at 100 dpi of the 150 dpi image: the plots' text then matches the page's.
            width = int.from_bytes(plot.png[16:20], "big") * 2 // 3
            parts += [f'<figure id="{escape(plot.stem)}">',
                      f'<img alt="{escape(plot.title)}" width="{width}" src="data:image/png;base64,{data}">',
                      f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}</figcaption>", "</figure>"]
    parts.append("<h2>Models</h2>")
    parts += [model_section(model, board) for model in study.models]
    if study.unanalysed:
        parts += ["<h2>Not in the report</h2>", "<ul>"]
        parts += [f"<li><b>{escape(item.name)}</b>: {escape(item.status)}"
                  + (f" ({escape(item.reason)})" if item.reason else "") + "</li>" for item in study.unanalysed]
        parts.append("</ul>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def table_html(table: Table) -> str:
    bold = best_cells(table)
    head = "".join(f'<th class="{column.style}">{escape(column.title)}'
                   + (f"<br><small>{escape(column.subtitle)}</small>" if column.subtitle else "") + "</th>"
                   for column in table.columns)
    rows = []
    for number, (row, role) in enumerate(zip(table.rows, table.roles)):
        cells = []
        for index, value in enumerate(row):
            column = table.columns[index]
            text = escape(format_cell(column, value))
            if (number, index) in bold:
                text = f"<strong>{text}</strong>"
            cells.append(f'<td class="{column.style}">{text}</td>')
        rows.append(f'<tr class="{role}">' + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def model_section(model: ModelRow, board: Scoreboard) -> str:
    facts = [model.kind or "", format_params(model.total_params) + " parameters" if model.total_params else ""]
    if model.role == "pruned" and model.reduction_ratio is not None:
        facts.append(format_change(model.reduction_ratio) + " vs base")
    if model.quantization:
        facts.append(model.quantization + (f", {model.bits_per_param:.2f} bits/param" if model.bits_per_param else ""))
    if model.nonzero_params is not None and model.sparsity is not None:
        facts.append(f"{format_params(model.nonzero_params)} nonzero ({model.sparsity * 100:.1f}% zeros"
                     + (f", {model.nm_sparsity} pattern" if model.nm_sparsity else "") + ")")
    warnings = [line for line in model.warnings if not line.startswith("note:")]
    if warnings:
        facts.append(f"{len(warnings)} warning(s)")
    summary = escape(model.name) + (" (base)" if model.role == "base" else "")
    parts = [f"<details><summary>{summary} <span>{escape(' · '.join(fact for fact in facts if fact))}</span></summary>"]
    if model.path:
        parts.append(f'<p class="meta">{escape(model.path)}</p>')
    if model.warnings:
        parts.append('<ul class="warnings">' + "".join(
            f'<li class="{line_class(warning)}">{escape(warning)}</li>' for warning in model.warnings) + "</ul>")
    if model.scores:
        parts.append(scores_html(model, board))
    if model.layers:
        parts.append('<div class="scroll">' + layers_html(model) + "</div>")
    parts.append("</details>")
    return "\n".join(parts)


def line_class(warning: str) -> str:
    return "security" if warning.startswith("SECURITY") else "note" if warning.startswith("note:") else ""


def scores_html(model: ModelRow, board: Scoreboard) -> str:
    shown = {column.task: column.metric for column in board.columns}
    rows = []
    for task, result in sorted(model.scores.items()):
        metric = shown.get(task)
        value = result.metrics.get(metric) if metric else None
        metrics = ", ".join(f"{key} {number:.4g}" for key, number in sorted(result.metrics.items()))
        rows.append(f'<tr><td class="text">{escape(task)}</td><td class="text">{escape(metric or "(not shown)")}</td>'
                    f"<td>{'' if value is None else f'{value:.4f}'}</td><td class=\"text\">{escape(metrics)}</td>"
                    f'<td class="text">{escape(result.source)}</td></tr>')
    return ('<table><thead><tr><th class="text">task</th><th class="text">shown</th><th>value</th>'
            '<th class="text">all metrics</th><th class="text">from</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def layers_html(model: ModelRow) -> str:
    sliced = any(layer.shortcut for layer in model.layers)
    scanned = any(layer.sparsity is not None for layer in model.layers)
    compared = any(layer.base_total for layer in model.layers) and model.role != "base"
    header = ["layer"] + (["base layer", "kept"] if compared else []) + [
        "total", "attention", "heads", "KV heads", "MLP", "intermediate", "norm"] + (
        ["shortcut"] if sliced else []) + (["nonzero", "sparsity"] if scanned else []) + ["all zero"]
    computed = any(layer.prefill_flops is not None for layer in model.layers)
    if computed:  # a prefill's MACs per layer (FLOPs / 2), the convention under the summary table
        header += ["MACs"] + (["MACs kept"] if compared else [])
    rows, zeroed = [], False
    for layer in model.layers:
        cells = [str(layer.layer_idx)]
        if compared:
            kept = f"{layer.total / layer.base_total * 100:.1f}%" if layer.base_total else "-"
            cells += ["-" if layer.base_layer_idx is None else str(layer.base_layer_idx), kept]
        counts = [effective(layer.effective_heads, layer.num_heads),
                  effective(layer.effective_kv_heads, layer.num_kv_heads),
                  effective(layer.effective_intermediate_size, layer.intermediate_size)]
        zeroed = zeroed or any("/" in count for count in counts)
        cells += [f"{layer.total:,}", f"{layer.attention:,}", *counts[:2], f"{layer.mlp:,}", counts[2],
                  f"{layer.norm:,}"]
        if sliced:
            cells.append(f"{layer.shortcut:,}")
        if scanned:
            cells += ["-" if layer.nonzero is None else f"{layer.nonzero:,}",
                      "-" if layer.sparsity is None else f"{layer.sparsity * 100:.1f}%"]
        cells.append({True: "yes", False: "", None: "?"}[layer.is_zero_layer])
        if computed:
            cells.append(format_params(layer.prefill_flops // 2) if layer.prefill_flops is not None else "-")
            if compared:
                cells.append(f"{layer.prefill_flops / layer.base_prefill_flops * 100:.1f}%"
                             if layer.prefill_flops is not None and layer.base_prefill_flops else "-")
        rows.append("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{escape(title)}</th>" for title in header) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>"
            + ('<p class="notes">3/4: 3 of the 4 heads in the weights (or KV heads, or MLP channels) have nonzero '
               "weights; the rest are zeroed in place.</p>" if zeroed else ""))


def effective(count: int | None, shape: int | None) -> str:
    """Heads or MLP channels: "3/4" where the content scan found fewer holding nonzero weights than
    the shapes have."""
    if shape is None:
        return "-"
    return f"{count}/{shape}" if count is not None and count < shape else str(shape)
