"""`prunescope report` (and `prunescope analyze ... --report`): read, then write every format asked for.

Writes under --output_dir: tables/summary.{md,csv,tex}, tables/layers.csv, plots/*.{png,svg},
report.html. Bad input (a corrupt results file, a missing analysis) is one warning line each and
the report goes on; the exit status is 1 only when there is nothing to report on or a file cannot
be written.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..atomic import write_atomic
from .evals import build_scoreboard, parse_metric_choices
from .study import StudyError, load_study
from .tables import layers_csv, summary_table, to_csv, to_latex, to_markdown

FORMATS = ("md", "csv", "tex", "html", "png", "svg")
IMAGE_FORMATS = ("png", "svg")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", default="baselines_analysis/",
                        help="the analyze run's --output_dir: read from, and the report is written there "
                             "(default: %(default)s)")
    parser.add_argument("--models_dir", "--models-dir", dest="models_dir",
                        help="where the models are, if not where the batch file says (moved), or when there is "
                             "no batch file: the analyses and evaluation results are read there")
    parser.add_argument("--format", default=",".join(FORMATS), metavar="LIST",
                        help="comma-separated, of: " + ", ".join(FORMATS) + " (default: all)")
    parser.add_argument("--metric", action="append", default=[], metavar="[TASK=]METRIC",
                        help="metric to show: `acc` for every task that has it, `arc_challenge=acc_norm` for one "
                             "task (repeatable; default: acc_norm where reported, else acc)")
    parser.add_argument("--tasks", metavar="LIST", help="comma-separated tasks to show, in this order "
                                                          "(default: all, without the subtasks of groups)")
    parser.add_argument("--subtasks", action="store_true", help="also show the subtasks of groups (MMLU subjects)")
    parser.add_argument("--per_task", "--per-task", dest="per_task", action="store_true",
                        help="also plot each task's score against parameters")
    parser.add_argument("--accuracy_x", "--accuracy-x", dest="accuracy_x", choices=("params", "nonzero", "flops"),
                        default="params", help="x axis of the accuracy plots: total parameters, nonzero parameters "
                                               "(--sparsity) or prefill MACs (default: %(default)s)")
    parser.add_argument("--base_results", "--base-results", dest="base_results", metavar="NAME_OR_PATH",
                        help="the results-only folder (its name under --models_dir, or a path) that holds the base "
                             "model's scores, when its name does not say so")


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()))
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format: unknown {', '.join(unknown) or 'empty list'} (choose from {', '.join(FORMATS)})")
    return formats


def report_from_args(args: argparse.Namespace) -> int:
    try:
        formats = parse_formats(args.format)
    except ValueError as error:
        print(f"✗ error: {error}", file=sys.stderr)
        return 2
    tasks = tuple(task.strip() for task in (args.tasks or "").split(",") if task.strip())
    return run_report(args.output_dir, models_dir=args.models_dir, formats=formats, metrics=args.metric,
                      tasks=tasks, per_task=args.per_task, show_subtasks=args.subtasks,
                      base_results=args.base_results, accuracy_x=args.accuracy_x)


def run_report(output_dir: str, models_dir: str | None = None, formats: tuple = FORMATS, metrics=(),
               tasks: tuple = (), per_task: bool = False, show_subtasks: bool = False,
               base_results: str | None = None, out=None, accuracy_x: str = "params") -> int:
    out = out or sys.stdout
    say = lambda text="": print(text, file=out)  # noqa: E731
    try:
        study = load_study(output_dir, models_dir, base_results)
    except StudyError as error:
        say(f"✗ error: {error}")
        return 1
    if not study.models:  # every model skipped or failed, and no results: tables without rows help nobody
        for problem in study.problems:
            say(f"⚠ {problem}")
        say(f"✗ error: nothing to report on: no model under {output_dir} has an analysis or evaluation results"
            + "".join(f"\n  {item.name}: {item.status}" + (f" ({item.reason})" if item.reason else "")
                      for item in study.unanalysed))
        return 1
    board, choice_problems = build_scoreboard({model.name: model.scores for model in study.models},
                                              parse_metric_choices(metrics), tasks, show_subtasks)
    problems = list(study.problems) + choice_problems
    table = summary_table(study, board)
    texts = []
    tables = os.path.join(output_dir, "tables")
    if "md" in formats:
        texts.append((os.path.join(tables, "summary.md"), to_markdown(table)))
    if "csv" in formats:
        texts += [(os.path.join(tables, "summary.csv"), to_csv(table)),
                  (os.path.join(tables, "layers.csv"), layers_csv(study))]
    if "tex" in formats:
        texts.append((os.path.join(tables, "summary.tex"), to_latex(table)))
    written = []
    try:
        for path, text in texts:
            write_atomic(path, text)
            written.append(path)
        plots = []
        image_formats = tuple(name for name in formats if name in IMAGE_FORMATS)
        if image_formats or "html" in formats:
            plots = draw_plots(study, board, os.path.join(output_dir, "plots"), image_formats, per_task, problems,
                               accuracy_x)
            written += [path for plot in plots for path in plot.files]
        if "html" in formats:
            from .html import render_html

            path = os.path.join(output_dir, "report.html")
            write_atomic(path, render_html(study, table, board, plots, problems))
            written.append(path)
    except OSError as error:
        say(f"✗ error: {error.filename or output_dir}: cannot write: {error.strerror or error} "
            "(choose a writable --output_dir)")
        return 1
    for problem in problems:
        say(f"⚠ {problem}")
    evaluated = sum(1 for model in study.models if board.values.get(model.name))
    say(f"✓ report: {len(study.models)} model(s), {evaluated} with evaluation results, "
        f"{len(board.columns)} task(s), {len(written)} file(s) under {output_dir}")
    for path in written:
        say(f"  {path}")
    # Results files are found by content too (eval_results.json, lm_eval_<task>.json): say which ones.
    for name, source in sorted({(model.name, result.source) for model in study.models
                                for result in model.scores.values()}):
        say(f"  scores of {name} from {source}")
    return 0


def draw_plots(study, board, folder: str, image_formats: tuple, per_task: bool, problems: list,
               accuracy_x: str = "params") -> list:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        problems.append("matplotlib is not installed: no plots (pip install 'prunescope[report]')")
        return []
    from .plots import write_plots

    return write_plots(study, board, folder, image_formats, per_task, problems, accuracy_x)
