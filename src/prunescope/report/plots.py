"""The report's figures. matplotlib is imported here, inside the functions that draw, with the Agg
backend (no display), so that nothing else in prunescope pays for it.

Readable in print: every series differs in line style and marker as well as colour (Okabe-Ito
colours, distinct for colour-blind readers), heatmaps use cividis (lightness rises monotonically, so
it reads in greyscale), bar segments are hatched, legends sit outside the data. Line plots switch to
one small panel per model past a handful of models: thirty overlapping lines read as none.
"""

from __future__ import annotations

import io
import math
import os

from ..records import Record
from ..atomic import write_atomic
from .evals import Scoreboard
from .study import ModelRow, Study
from .tables import format_change, format_params

COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
BASE_STYLE = dict(color="0.2", linestyle=(0, (4, 3)), linewidth=1.1, label="base", zorder=3)  # on top: dashes let an
# identical model line show through
ONE_AXES_MAX = 6  # models drawn in one axes; more get one small panel each
LABEL_CHARS = 32
SPARSE_ENOUGH = 0.005  # a layer with fewer zeros than this is dense for the sparsity plot
PARTS = (  # (field, legend label, colour, hatch) of the stacked bars
    ("embedding_params", "Embedding & LM head", "#0072B2", ""),
    ("attention_params", "Attention", "#E69F00", "//"),
    ("mlp_params", "MLP", "#009E73", ".."),
    ("norm_params", "Norms", "#CC79A7", "xx"),
    ("other_params", "Other (SliceGPT shortcuts, ...)", "#999999", "\\\\"),
)
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "grid.linewidth": 0.6, "legend.frameon": False, "svg.fonttype": "none",
    "svg.hashsalt": "prunescope", "savefig.dpi": 150, "image.cmap": "cividis",
}
PNG_DPI = 150


class Plot(Record):
    stem: str  # the file name without its extension
    title: str
    caption: str
    png: bytes  # the image, for the HTML report
    files: tuple  # the files written


class Point(Record):
    name: str
    params: int  # what the x axis shows: parameters, nonzero parameters or MACs
    score: float
    is_base: bool = False


# -- pure helpers (tested without matplotlib) ---------------------------------------------------


def pareto_front(points: list[Point], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates: none has no more parameters and a score at
    least as good, with one of the two strictly better."""
    def better_or_equal(a: float, b: float) -> bool:
        return a >= b if higher_is_better else a <= b

    front = []
    for index, point in enumerate(points):
        dominated = any(other.params <= point.params and better_or_equal(other.score, point.score)
                        and (other.params < point.params or other.score != point.score)
                        for other in points)
        if not dominated:
            front.append(index)
    return front


def param_scale(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if largest >= scale:
            return scale, unit
    return 1.0, ""


def literal(text: str) -> str:
    """Text that matplotlib shows as it is: it reads `$...$` as maths, and a name such as
    `run_$\\alpha$` would be typeset, or fail the whole figure when it is no valid formula."""
    return text.replace("$", r"\$")


def short(name: str, limit: int = LABEL_CHARS) -> str:
    """A model name as a label: shortened, shown as it is."""
    return literal(name if len(name) <= limit else name[: limit - 1] + "…")


def aligned(model: ModelRow) -> bool:
    """Whether the model's layers can be drawn at the base layer they came from."""
    return bool(model.base_num_layers) and all(layer.base_layer_idx is not None for layer in model.layers)


def depth_series(model: ModelRow, field: str = "total") -> tuple[list[int], list[float | None]]:
    """(x, y) of a per-layer quantity. Aligned with the base, a removed base layer is a 0 at its
    place: the dip shows where the pruning cut. Otherwise the model's own layer numbers."""
    if aligned(model):
        by_base = {layer.base_layer_idx: getattr(layer, field) for layer in model.layers}
        xs = list(range(model.base_num_layers))
        return xs, [by_base.get(x, 0 if field != "sparsity" else None) for x in xs]
    return [layer.layer_idx for layer in model.layers], [getattr(layer, field) for layer in model.layers]


def kept_shares(model: ModelRow, part: str, width: int, nonzero: bool = False) -> list[float | None]:
    """Per base layer, the share of the base's `part` ("attention"/"mlp") parameters this model kept,
    counted by shape or, with `nonzero`, by nonzero values (content scan): 0 where the layer was
    removed, None where the base's count is unknown."""
    field = f"{part}_nonzero" if nonzero else part
    shares: list[float | None] = [0.0 if aligned(model) else None] * width
    for layer in model.layers:
        index = layer.base_layer_idx
        base, kept = getattr(layer, f"base_{field}"), getattr(layer, field)
        if index is not None and index < width and base and kept is not None:
            shares[index] = kept / base
    return shares


def structural_models(study: Study) -> list[ModelRow]:
    return [model for model in study.models if model.role != "results" and model.layers]


def compared_models(study: Study) -> list[ModelRow]:
    return [model for model in study.models if model.role == "pruned" and model.base_num_layers and model.layers]


# -- drawing ------------------------------------------------------------------------------------


def new_figure(width: float, height: float, constrained: bool = True):
    """Constrained layout fits legends and labels outside the axes; grids of small panels are laid
    out by hand instead (constrained layout costs seconds for thirty panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)  # a renderer without pyplot's global state: labels are measured on it
    return figure


def series_style(number: int) -> dict:
    """Colour, line style and marker all change from one model to the next (greyscale-proof)."""
    return dict(color=COLOURS[number % len(COLOURS)], linestyle=LINE_STYLES[number % len(LINE_STYLES)],
                marker=MARKERS[number % len(MARKERS)], markersize=4, linewidth=1.3)


def panel_grid(figure, count: int, columns: int) -> list:
    axes = figure.subplots(math.ceil(count / columns), columns, sharex=True, sharey=True, squeeze=False)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    for axis in axes.flat[max(0, count - columns):count]:  # the last in each column shows its layer numbers
        axis.xaxis.set_tick_params(labelbottom=True)
    return list(axes.flat[:count])


def plot_series(axis, model: ModelRow, field: str, factor: float, style: dict) -> None:
    xs, ys = depth_series(model, field)
    axis.plot(xs, [math.nan if y is None else y * factor for y in ys], **style)


def per_layer_figure(models: list[ModelRow], base: ModelRow | None, field: str, factor: float,
                     ylabel: str, title: str):
    """`field` per layer (times `factor`): lines in one axes, or one panel per model past
    ONE_AXES_MAX; the base dashed in each."""
    xlabel = "Layer (base model's numbering)" if base and all(aligned(model) for model in models) else "Layer"
    with_base = base is not None and any(getattr(layer, field) is not None for layer in base.layers)
    if len(models) <= ONE_AXES_MAX:
        figure = new_figure(7.0, 3.8)
        axis = figure.add_subplot()
        if with_base:
            plot_series(axis, base, field, factor, BASE_STYLE)
        for number, model in enumerate(models):
            plot_series(axis, model, field, factor, dict(label=short(model.name), **series_style(number)))
        axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axis.set_ylim(bottom=0)
        integer_ticks(axis)
        return figure
    columns = 5 if len(models) > 12 else 4
    width, height = 2.6 * columns, 1.9 * math.ceil(len(models) / columns) + 0.9
    figure = new_figure(width, height, constrained=False)
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.6 / height, top=1 - 0.55 / height,
                           wspace=0.12, hspace=0.42)
    for axis, model in zip(panel_grid(figure, len(models), columns), models):
        if with_base:
            plot_series(axis, base, field, factor, BASE_STYLE)
        plot_series(axis, model, field, factor, series_style(0))
        axis.set_title(short(model.name, 28), fontsize=8)
        axis.set_ylim(bottom=0)
        integer_ticks(axis)
    figure.supxlabel(xlabel, y=0.15 / height, va="bottom")
    figure.supylabel(ylabel, x=0.1 / width, ha="left")
    figure.suptitle(title + (" (dark dashed: base)" if with_base else ""), y=1 - 0.12 / height, va="top")
    return figure


def integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))


def depth_profile(study: Study):
    models = [model for model in structural_models(study) if model.role != "base"]
    if not models:
        return None
    base = next((model for model in study.models if model.role == "base" and model.layers), None)
    largest = max(layer.total for model in models + ([base] if base else []) for layer in model.layers)
    scale, unit = param_scale(largest)
    return per_layer_figure(models, base, "total", 1 / scale, f"Parameters per layer ({unit})" if unit else
                            "Parameters per layer", "Parameters per layer")


def sparsity_profile(study: Study):
    # Only models with zeros to show: thirty flat lines at 0% would bury the few that are sparse.
    models = [model for model in structural_models(study)
              if model.role != "base" and any((layer.sparsity or 0) >= SPARSE_ENOUGH for layer in model.layers)]
    if not models:
        return None
    base = next((model for model in study.models if model.role == "base" and model.layers), None)
    figure = per_layer_figure(models, base, "sparsity", 100.0, "Zero parameters (%)", "Sparsity per layer")
    for axis in figure.axes:
        axis.set_ylim(0, 100)
    return figure


def kept_heatmap(study: Study):
    return share_heatmap(compared_models(study), nonzero=False)


def nonzero_heatmap(study: Study):
    """The kept share counted in nonzero values: what unstructured pruning (Wanda, magnitude) and
    in-place zeroing keep, which the shapes do not show. Drawn when some model has zeros to show;
    the models whose contents were scanned with the base's are its rows."""
    models = [model for model in compared_models(study)
              if any(layer.base_attention_nonzero or layer.base_mlp_nonzero for layer in model.layers)]
    if not any((layer.sparsity or 0) >= SPARSE_ENOUGH for model in models for layer in model.layers):
        return None
    return share_heatmap(models, nonzero=True)


def share_heatmap(models: list[ModelRow], nonzero: bool):
    """Models x base layers, attention and MLP side by side, in % of the base layer's parameters
    (or nonzero parameters) kept."""
    from matplotlib.patches import Patch, Rectangle

    if not models:
        return None
    width = max(model.base_num_layers for model in models)
    panel_width = max(3.0, min(8.0, 0.28 * width + 1.0))
    height = max(2.4, 0.3 * len(models) + 1.6)
    figure = new_figure(2 * panel_width + 3.2, height)
    axes = figure.subplots(1, 2, sharey=True)
    annotate = len(models) * width <= 240 and width <= 24
    what = "nonzero parameters" if nonzero else "parameters"
    zero_layers = unknown = False
    image = None
    for axis, part, label in zip(axes, ("attention", "mlp"), ("Attention", "MLP")):
        grid = [[math.nan if share is None else share * 100 for share in kept_shares(model, part, width, nonzero)]
                for model in models]
        top = max([100.0] + [value for row in grid for value in row if not math.isnan(value)])
        image = axis.imshow(grid, aspect="auto", vmin=0.0, vmax=top, cmap=colour_map(), interpolation="nearest")
        axis.set_title(label)
        axis.set_xlabel("Layer (base model's numbering)")
        axis.grid(False)
        axis.set_yticks(range(len(models)), [short(model.name) for model in models])
        integer_ticks(axis)
        unknown = unknown or any(math.isnan(value) for row in grid for value in row)
        for row, model in enumerate(models):
            hatched = {layer.base_layer_idx for layer in model.layers
                       if layer.is_zero_layer and layer.base_layer_idx is not None}
            for column in hatched:
                zero_layers = True
                value = grid[row][column]
                light = not math.isnan(value) and value / top > 0.55
                axis.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, hatch="xx",
                                         edgecolor="black" if light else "white", linewidth=0))
            if annotate:
                for column, value in enumerate(grid[row]):
                    if not math.isnan(value):  # on a hatched cell, on a patch of the cell's colour
                        axis.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=6,
                                  color="black" if value / top > 0.55 else "white",
                                  bbox=dict(facecolor=image.cmap(image.norm(value)), edgecolor="none", pad=2.5)
                                  if column in hatched else None)
    colour_bar = figure.colorbar(image, ax=list(axes), fraction=0.04, pad=0.02)
    colour_bar.set_label("Kept (%)")
    figure.suptitle(f"Share of the base's {what} kept, per layer" + ("" if nonzero else " (by shape)"))
    handles = [Patch(facecolor="#dddddd", label="base count unknown" if nonzero else "base size unknown")] \
        if unknown else []
    if zero_layers:
        handles.append(Patch(facecolor="white", hatch="xx", edgecolor="black", label="all-zero layer (weights kept, "
                                                                                     "all zero)"))
    if handles:  # above the panel's title, at the same distance whatever the figure's height
        from matplotlib.transforms import ScaledTranslation

        axes[0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2,
                       bbox_transform=axes[0].transAxes + ScaledTranslation(0.0, 0.22, figure.dpi_scale_trans))
    return figure


def colour_map():
    import matplotlib

    return matplotlib.colormaps["cividis"].with_extremes(bad="#dddddd")


def composition_bars(study: Study):
    models = [model for model in study.models if model.total_params is not None
              and all(getattr(model, field) is not None for field, *_ in PARTS)]
    if not models:
        return None
    scale, unit = param_scale(max(model.total_params for model in models))
    figure = new_figure(7.5, max(2.2, 0.32 * len(models) + 1.4))
    axis = figure.add_subplot()
    positions = list(range(len(models)))
    left = [0.0] * len(models)
    for field, label, colour, hatch in PARTS:
        values = [getattr(model, field) / scale for model in models]
        if not any(values):
            continue
        axis.barh(positions, values, left=left, color=colour, hatch=hatch, edgecolor="white", linewidth=0.5,
                  label=label, height=0.7)
        left = [start + value for start, value in zip(left, values)]
    for position, model in zip(positions, models):
        change = "" if model.role == "base" or model.reduction_ratio is None else \
            f" ({format_change(model.reduction_ratio)})"
        axis.text(left[position], position, f" {format_params(model.total_params)}{change}", va="center", fontsize=7)
    axis.set_yticks(positions, [short(model.name) + (" (base)" if model.role == "base" else "") for model in models])
    axis.invert_yaxis()
    axis.set_xlim(0, max(left) * 1.22)
    axis.set_xlabel(f"Parameters ({unit})" if unit else "Parameters")
    axis.grid(axis="y", visible=False)
    axis.set_title("Where the parameters are", loc="left", pad=24)
    axis.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=5, fontsize=7, handlelength=1.6,
                columnspacing=1.0)
    return figure


# The accuracy plot's x axis: ModelRow field, axis label.
ACCURACY_X = {"params": ("total_params", "Total parameters"), "nonzero": ("nonzero_params", "Nonzero parameters"),
              "flops": ("prefill_macs", "Prefill MACs")}


def accuracy_points(study: Study, values: dict, x: str = "params") -> list[Point]:
    field = ACCURACY_X[x][0]
    return [Point(model.name, getattr(model, field), values[model.name], model.role == "base")
            for model in study.models if getattr(model, field) is not None and values.get(model.name) is not None]


def accuracy_vs_params(study: Study, board: Scoreboard, task: str | None = None, x: str = "params"):
    """Average score (or one task's) against total parameters (or nonzero parameters, or prefill MACs),
    the Pareto front marked."""
    if task is None:
        if not board.average_over:
            return None
        values, percent, higher, ylabel = board.averages, True, True, "Average accuracy (%)"
        title = "Accuracy against size"
    else:
        column = next(column for column in board.columns if column.task == task)
        values = {name: scores[task] for name, scores in board.values.items() if task in scores}
        percent, higher = column.percent, column.higher_is_better
        ylabel = literal(f"{task}: {column.metric}") + (" (%)" if percent else "")
        title = literal(task) + " against size" + ("" if higher else " (lower is better)")
    points = accuracy_points(study, values, x)
    if len(points) < 2:  # one point has no trade-off to show
        return None
    scale, unit = param_scale(max(point.params for point in points))
    factor = 100.0 if percent else 1.0
    front = set(pareto_front(points, higher))
    many = len(points) > 12
    figure = new_figure(9.0 if many else 6.8, 6.4 if many else 4.4)
    axis = figure.add_subplot()
    xs = [point.params / scale for point in points]
    ys = [point.score * factor for point in points]
    ordered = sorted(front, key=lambda index: (xs[index], -ys[index] if higher else ys[index]))
    if len(ordered) > 1:
        axis.plot([xs[i] for i in ordered], [ys[i] for i in ordered], drawstyle="steps-post", color="#0072B2",
                  linewidth=1.2, alpha=0.8, zorder=2, label="Pareto front")
    groups = (
        ([i for i in front if not points[i].is_base], dict(marker="o", s=36, facecolor="#0072B2", edgecolor="#0072B2"),
         "on the front"),
        ([i for i in range(len(points)) if i not in front and not points[i].is_base],
         dict(marker="o", s=36, facecolor="white", edgecolor="0.35"), "dominated"),
        ([i for i in range(len(points)) if points[i].is_base], dict(marker="*", s=140, facecolor="black",
                                                                     edgecolor="black"), "base"),
    )
    for indices, style, label in groups:
        if indices:
            axis.scatter([xs[i] for i in indices], [ys[i] for i in indices], zorder=3, linewidths=1.2,
                         label=label, **style)
    pad_axes(axis, xs, ys)
    order = sorted(range(len(points)), key=lambda index: index not in front)  # the front's labels get the best spots
    place_labels(figure, axis, [short(points[index].name, 24) for index in order], [xs[index] for index in order],
                 [ys[index] for index in order], 6.5 if many else 8)
    xlabel = ACCURACY_X[x][1]
    if x == "flops":
        xlabel += f" at S={next(m.compute_options.get('seq_len') for m in study.models if m.prefill_macs)} (FLOPs = 2 x MACs)"
    axis.set(xlabel=f"{xlabel} ({unit})" if unit else xlabel, ylabel=ylabel, title=title)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


FLOP_PARTS = (  # (LayerRow field, legend label, colour, hatch) of the per-layer FLOPs bars
    ("prefill_attention_projections", "Attention projections", "#E69F00", "//"),
    ("prefill_attention_core", "Attention core (QKᵀ, A·V)", "#D55E00", "xx"),
    ("prefill_mlp", "MLP", "#009E73", ".."),
    ("prefill_shortcut", "SliceGPT shortcuts", "#999999", "\\\\"),
)


def flops_profile(study: Study):
    """Per layer, the prefill FLOPs split into attention projections, attention core and MLP (stacked bars,
    at the base layer each came from), the base's per-layer FLOPs as a dashed outline; one panel per model."""
    models = [model for model in study.models if model.role != "base"
              and any(layer.prefill_flops is not None for layer in model.layers)]
    if not models:
        return None
    base = next((model for model in study.models if model.role == "base"
                 and any(layer.prefill_flops is not None for layer in model.layers)), None)
    largest = max(layer.prefill_flops or 0 for model in models + ([base] if base else []) for layer in model.layers)
    scale, unit = param_scale(largest)
    columns = min(len(models), 3 if len(models) <= 9 else 5)
    rows = math.ceil(len(models) / columns)
    figure = new_figure(3.4 * columns + 1.6, (2.5 if rows <= 3 else 1.6) * rows + 0.9)
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
    parts = [part for part in FLOP_PARTS if any(getattr(layer, part[0]) for model in models for layer in model.layers)]
    for axis, model in zip(axes.flat, models):
        xs = [layer.base_layer_idx if base is not None and aligned(model) else layer.layer_idx for layer in model.layers]
        bottom = [0.0] * len(xs)
        for field, label, colour, hatch in parts:
            heights = [(getattr(layer, field) or 0) / scale for layer in model.layers]
            axis.bar(xs, heights, bottom=bottom, color=colour, hatch=hatch, edgecolor="white", linewidth=0.3,
                     label=label, width=0.8)
            bottom = [low + height for low, height in zip(bottom, heights)]
        if base is not None:
            axis.bar([layer.layer_idx for layer in base.layers], [(layer.prefill_flops or 0) / scale for layer in base.layers],
                     fill=False, edgecolor="0.2", linestyle="--", linewidth=0.9, width=0.8, label="base")
        axis.set_title(short(model.name, 30), fontsize=8)
        integer_ticks(axis)
    for axis in list(axes.flat)[len(models):]:
        axis.set_visible(False)
    seq_len = next(m.compute_options.get("seq_len") for m in models if m.compute_options)
    figure.supxlabel("Layer (base model's numbering)" if base else "Layer")
    figure.supylabel(f"Prefill FLOPs ({unit})" if unit else "Prefill FLOPs")
    figure.suptitle(f"FLOPs per layer, prefill of S={seq_len} tokens")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper")
    return figure


def memory_at(model, context: int) -> float | None:
    """Weights + KV cache (bytes) at `context` tokens and the model's batch; sliding-window layers keep
    window - 1 tokens."""
    if model.weight_bytes is None or not model.kv_layers:
        return None
    from ..compute import cached_tokens

    batch = model.compute_options.get("batch") or 1
    return model.weight_bytes + batch * sum(per_token * cached_tokens(window, context)
                                            for per_token, window in model.kv_layers)


LEGEND_ROWS = 16  # legend entries per column beside an axes


def memory_vs_context(study: Study):
    models = [model for model in study.models if memory_at(model, 1) is not None]
    if not models:
        return None
    contexts = [2 ** power for power in range(7, 18)]  # 128 to 131072 tokens
    # One legend entry per model beside the axes: past LEGEND_ROWS entries, more columns and more height
    # (30 models in one column would leave the axes no room at all).
    columns = 1 + (len(models) - 1) // LEGEND_ROWS
    figure = new_figure(7.0 + 1.7 * (columns - 1), max(3.8, 0.19 * min(len(models), LEGEND_ROWS) + 1.2))
    axis = figure.add_subplot()
    scale = 2 ** 30 if max(memory_at(model, contexts[-1]) for model in models) >= 2 ** 30 else 2 ** 20
    number = 0
    for model in models:
        style = BASE_STYLE if model.role == "base" else dict(label=short(model.name), **series_style(number))
        number += model.role != "base"
        axis.plot(contexts, [memory_at(model, context) / scale for context in contexts], **style)
    axis.set_xscale("log", base=2)
    batch = models[0].compute_options.get("batch") or 1
    axis.set(xlabel="Context length (tokens)", ylabel=f"Weights + KV cache ({'GiB' if scale == 2 ** 30 else 'MiB'})",
             title=f"Memory against context length (batch {batch})")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns,
                fontsize=7 if len(models) > ONE_AXES_MAX else None)
    return figure


def pad_axes(axis, xs: list[float], ys: list[float]) -> None:
    """Room around the points for their labels; a single point still gets a visible range."""
    for values, setter in ((xs, axis.set_xlim), (ys, axis.set_ylim)):
        low, high = min(values), max(values)
        span = (high - low) or (abs(high) * 0.1 or 1.0)
        setter(low - span * 0.12, high + span * (0.3 if setter == axis.set_xlim else 0.15))


def place_labels(figure, axis, texts: list[str], xs: list[float], ys: list[float], fontsize: float) -> None:
    """Label each point at the first nearby spot where the label overlaps no earlier one; a label
    that had to move far gets a thin leader line to its point."""
    renderer = figure.canvas.get_renderer()
    candidates = [(5, 4, "left"), (5, -11, "left"), (-5, 4, "right"), (-5, -11, "right")]
    candidates += [(5 * side, step * sign, "left" if side > 0 else "right")
                   for step in (16, 26, 36, 48, 60) for sign in (1, -1) for side in (1, -1)]
    from matplotlib.transforms import Bbox

    radius = 3.5 * figure.dpi / 72  # a marker, in pixels: labels keep off the other points too
    markers = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)
               for px, py in axis.transData.transform(list(zip(xs, ys)))]
    placed = []
    for number, (text, x, y) in enumerate(zip(texts, xs, ys)):
        obstacles = placed + markers[:number] + markers[number + 1:]
        label = axis.annotate(text, (x, y), xytext=candidates[0][:2], textcoords="offset points",
                              fontsize=fontsize, zorder=4)
        best, best_overlap = candidates[0], None
        for dx, dy, align in candidates:
            label.set_position((dx, dy))
            label.set_horizontalalignment(align)
            box = label.get_window_extent(renderer).expanded(1.05, 1.15)
            overlap = sum(overlap_area(box, other) for other in obstacles)
            if best_overlap is None or overlap < best_overlap:
                best, best_overlap = (dx, dy, align), overlap
            if overlap == 0:
                break
        dx, dy, align = best
        if abs(dy) > 12:
            label.remove()
            label = axis.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                  zorder=4, arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.5,
                                                            shrinkA=0, shrinkB=3))
        label.set_position((dx, dy))
        label.set_horizontalalignment(align)
        placed.append(label.get_window_extent(renderer))


def overlap_area(one, other) -> float:
    width = min(one.x1, other.x1) - max(one.x0, other.x0)
    height = min(one.y1, other.y1) - max(one.y0, other.y0)
    return width * height if width > 0 and height > 0 else 0.0


# -- writing ------------------------------------------------------------------------------------


def figure_bytes(figure, image_format: str) -> bytes:
    buffer = io.BytesIO()
    metadata = {"Date": None} if image_format == "svg" else {"Software": "prunescope"}
    # No bbox_inches="tight": constrained layout already fits everything (legends outside the axes
    # included) in the figure, and "tight" would draw every figure twice.
    figure.savefig(buffer, format=image_format, dpi=PNG_DPI, facecolor="white", metadata=metadata)
    return buffer.getvalue()


CONVENTION_CAPTION = ("FLOPs = 2 x MACs of every matrix product as torch's FlopCounterMode counts an eager forward "
                      "(linear weights without biases, attention QKᵀ and A·V over the full rectangle with the query "
                      "heads, LM head on every position; nothing elementwise); zeroed or 2:4 weights keep their dense "
                      "FLOPs.")


def plan(study: Study, board: Scoreboard, per_task: bool, accuracy_x: str = "params") -> list[tuple]:
    """(stem, title, caption, draw) of every figure the data allows, in report order."""
    x_words = {"params": "total parameters", "nonzero": "nonzero parameters", "flops": "prefill MACs"}[accuracy_x]
    x_caption = f" {CONVENTION_CAPTION}" if accuracy_x == "flops" else ""
    figures = [
        ("depth_profile", "Parameters per layer", "Each model's parameters per layer against the base (dashed); "
         "a removed layer shows as 0 at its place in the base.", lambda: depth_profile(study)),
        ("kept_heatmap", "Share of the base kept, per layer", "Attention and MLP parameters kept per base layer, "
         "in % (100 = unchanged, 0 = removed), from the tensors' shapes.", lambda: kept_heatmap(study)),
        ("nonzero_heatmap", "Share of the base's nonzero parameters kept, per layer", "Nonzero attention and MLP "
         "parameters per base layer, in % of the base's (content scan, --sparsity): unstructured pruning and "
         "in-place zeroing show here, not in the shapes.", lambda: nonzero_heatmap(study)),
        ("composition", "Where the parameters are", "Each model's parameters by part; the change against the "
         "base in brackets.", lambda: composition_bars(study)),
        ("sparsity_profile", "Sparsity per layer", "Share of zero parameters per layer (content scan, --sparsity), for the models that have zeros.",
         lambda: sparsity_profile(study)),
        ("flops_profile", "FLOPs per layer", "Prefill FLOPs per layer split into attention projections, attention "
         "core and MLP, against the base's (dashed outline). " + CONVENTION_CAPTION, lambda: flops_profile(study)),
        ("memory_vs_context", "Memory against context length", "Weights plus KV cache against context length "
         "(no activations); sliding-window layers stop growing at their window.", lambda: memory_vs_context(study)),
        ("accuracy_vs_params", "Accuracy against size", f"Average score against {x_words}; filled: the "
         "Pareto front (no model is both smaller and better)." + x_caption,
         lambda: accuracy_vs_params(study, board, x=accuracy_x)),
    ]
    if per_task:
        for column in board.columns:
            figures.append((f"accuracy_vs_params_{safe_stem(column.task)}", f"{column.task} against size",
                            f"{column.task} ({column.metric}) against {x_words}, Pareto front filled." + x_caption,
                            lambda task=column.task: accuracy_vs_params(study, board, task, accuracy_x)))
    return figures


def safe_stem(text: str) -> str:
    return "".join(character if character.isalnum() or character in "-_" else "_" for character in text)


def write_plots(study: Study, board: Scoreboard, folder: str, formats: tuple, per_task: bool = False,
                problems: list | None = None, accuracy_x: str = "params") -> list[Plot]:
    """Draw every figure the data allows; write it in `formats` ("png", "svg") under `folder`.
    PNG bytes are kept for the HTML even when no PNG file is asked for."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    plots = []
    for stem, title, caption, draw in plan(study, board, per_task, accuracy_x):
        with matplotlib.rc_context(STYLE):
            try:
                figure = draw()
                if figure is None:
                    continue
                png = figure_bytes(figure, "png")
                files = []
                for image_format in formats:
                    data = png if image_format == "png" else figure_bytes(figure, image_format)
                    path = os.path.join(folder, f"{stem}.{image_format}")
                    write_atomic(path, data)
                    files.append(path)
            except (ValueError, TypeError, OverflowError) as error:  # odd data must not sink the report
                if problems is not None:
                    problems.append(f"plot {stem}: not drawn ({type(error).__name__}: {error})")
                continue
        plots.append(Plot(stem=stem, title=title, caption=caption, png=png, files=tuple(files)))
    return plots
