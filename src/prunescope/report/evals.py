"""Evaluation results written by lm-evaluation-harness: finding them, reading them, choosing metrics.

Files are found by name (`results*.json`) or, under any other name, by content (see
`looks_like_results`). Two layouts are read:
- current harness (0.4+): `results_<timestamp>.json`, often one folder down
  (`<output_path>/<model>/results_2024-05-01T12-00-00.123456.json`); metrics are keyed
  `"acc,none"`, `"acc_norm,none"`, `"exact_match,strict-match"` (metric, then filter); groups such as
  MMLU list their subtasks under `group_subtasks`;
- older harness (0.3): `results.json` with plain keys (`"acc"`, `"acc_norm"`, `"ppl"`, ...).

A model with several result files uses, per task, the newest file that has the task. A file's time is
the timestamp in its name, else its `date` field, else its modification time.
"""

from __future__ import annotations

import json
import os
import re
import time

from ..records import Record

# Searched a few levels deep: the harness writes into `<output_path>/<model name>/`, and people nest
# that under `eval/` or `results/` inside the model folder.
MAX_DEPTH = 4
SKIPPED_DIRS = {"analysis", ".git", "__pycache__", ".cache", "node_modules"}
TIMESTAMP = re.compile(r"results_(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})")
# Keys inside a task's results that are not scores.
NOT_METRICS = ("alias", "name", "samples", "sample_len", "num_fewshot")

# The default metric per task, first found wins: acc_norm where the harness reports it (it corrects
# the bias towards short answers in multiple choice), else acc, then generative and perplexity metrics.
DEFAULT_PREFERENCE = ("acc_norm", "acc", "exact_match", "em", "f1", "mc2", "mc1", "mcc", "bleu",
                      "word_perplexity", "perplexity", "ppl", "byte_perplexity", "bits_per_byte")
LOWER_IS_BETTER = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ppl", "bpb", "ter",
                   "brier_score"}


class EvalError(Exception):
    """A results file that cannot be used; `str()` is one line naming the file."""


class ResultsFile(Record):
    path: str
    timestamp: float
    tasks: dict  # task -> {metric key: value}, metric keys without the harness's default ",none" filter
    higher_is_better: dict  # task -> {metric key: bool}, where the file says so
    subtasks: tuple  # tasks that are parts of a group the file also reports (MMLU's 57 subjects)
    model_names: tuple  # basenames of the model paths the file says were evaluated


class TaskResult(Record):
    """One task's scores for one model, from the newest file that has the task."""
    task: str
    metrics: dict  # metric key -> value
    higher_is_better: dict  # metric key -> bool (declared by the file)
    source: str
    is_subtask: bool = False


class TaskColumn(Record):
    """What a table column or a plot shows for one task."""
    task: str
    metric: str
    higher_is_better: bool
    percent: bool  # accuracies are shown x100; perplexities as they are


class MetricChoice(Record):
    preference: tuple = ()  # metric names tried before the defaults, for every task
    per_task: dict = {}  # task -> metric key


class Scoreboard(Record):
    """The evaluation part of the report: columns, each model's values, and averages."""
    columns: tuple  # TaskColumn, in display order
    values: dict  # model name -> {task: value}
    average_over: tuple  # tasks the average is taken over (every evaluated model has them)
    averages: dict  # model name -> mean of the average_over tasks' values (raw, 0-1)
    notes: tuple  # one line each, for captions and the HTML


# -- finding and reading ------------------------------------------------------------------------


def find_results_files(folder: str) -> list[str]:
    """lm-evaluation-harness output below `folder`: `results*.json` by name, any other JSON file by its
    content (`eval_results.json`, `lm_eval_<task>.json`, ...). Symlinks into it are followed once;
    loops are skipped."""
    found, seen, pending = [], set(), [(folder, 0)]
    while pending:
        current, depth = pending.pop(0)
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        try:
            names = sorted(os.listdir(current))
        except OSError:
            continue
        for name in names:
            path = os.path.join(current, name)
            if name.startswith("."):
                continue
            if os.path.isdir(path):
                if depth < MAX_DEPTH and name not in SKIPPED_DIRS:
                    pending.append((path, depth + 1))
            elif is_results_name(name) or (name.endswith(".json") and looks_like_results(path)):
                found.append(path)
    return found


def is_results_name(name: str) -> bool:
    return name == "results.json" or (name.startswith("results_") and name.endswith(".json"))


# JSON files that travel with models and are never evaluation results: not even opened.
NOT_RESULTS = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json", "adapter_config.json",
               "trainer_state.json", "model_structure.json", "model_comparison.json", "batch_analysis_results.json",
               "models_summary.json", "vocab.json"}
MAX_RESULTS_BYTES = 50 * 1024 * 1024  # the harness's output with per-sample logs is kept elsewhere


def looks_like_results(path: str) -> bool:
    """The harness's output by its content: a `results` object of task -> {metric: number}, beside
    the harness's own `versions`, `config` or `configs` keys."""
    name = os.path.basename(path)
    if name in NOT_RESULTS or name.endswith(".index.json"):
        return False
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_RESULTS_BYTES:
            return False
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        return False
    if not any(key in data for key in ("versions", "config", "configs", "n-shot", "higher_is_better")):
        return False
    return any(isinstance(scores, dict) and task_metrics(scores) for scores in data["results"].values())


def read_results_file(path: str) -> ResultsFile:
    try:
        if not os.path.isfile(path):
            raise EvalError(f"{path}: not a regular file; skipped")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise EvalError(f"{path}: cannot read: {error.strerror or error}") from None
    except (ValueError, RecursionError) as error:
        raise EvalError(f"{path}: not valid JSON ({error}); skipped") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise EvalError(f"{path}: no 'results' object, not an lm-evaluation-harness results file; skipped")
    tasks = {}
    for task, scores in data["results"].items():
        if isinstance(scores, dict):
            metrics = task_metrics(scores)
            if metrics:
                tasks[task] = metrics
    if not tasks:
        raise EvalError(f"{path}: no numeric scores in 'results'; skipped")
    return ResultsFile(path=path, timestamp=file_time(path, data), tasks=tasks,
                       higher_is_better=declared_directions(data.get("higher_is_better")),
                       subtasks=tuple(sorted(group_subtasks(data.get("group_subtasks"), tasks))),
                       model_names=evaluated_model_names(data))


def task_metrics(scores: dict) -> dict:
    """{"acc,none": 0.7, "acc_stderr,none": 0.01, "alias": "piqa"} -> {"acc": 0.7}."""
    metrics = {}
    for key, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            continue  # flags, "N/A" strings and NaN are not scores
        name, _, filter_name = key.partition(",")
        if name.endswith("_stderr") or name in NOT_METRICS:
            continue
        metrics[metric_key(name, filter_name)] = float(value)
    return metrics


def metric_key(name: str, filter_name: str = "") -> str:
    """The harness's default filter "none" is dropped, so both layouts give "acc"; others are kept."""
    return name if filter_name in ("", "none") else f"{name},{filter_name}"


def declared_directions(data) -> dict:
    directions = {}
    if isinstance(data, dict):
        for task, metrics in data.items():
            if isinstance(metrics, dict):
                directions[task] = {metric: bool(value) for metric, value in metrics.items()
                                    if isinstance(value, bool)}
    return directions


def group_subtasks(data, tasks: dict) -> set:
    """Subtasks of groups that have their own aggregate score in the file (hidden by default)."""
    hidden = set()
    if isinstance(data, dict):
        for group, members in data.items():
            if group in tasks and isinstance(members, list):
                hidden.update(member for member in members if isinstance(member, str) and member != group)
    return hidden


def evaluated_model_names(data: dict) -> tuple:
    """Basenames of the evaluated model's path, from `config.model_args` (`pretrained=/m/Llama,...`,
    or a dict) and `model_name`: evidence of which model a results-only folder belongs to."""
    names = []
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    arguments = config.get("model_args")
    if isinstance(arguments, str):
        arguments = dict(part.split("=", 1) for part in arguments.split(",") if "=" in part)
    if isinstance(arguments, dict):
        for key in ("pretrained", "model", "path"):
            if isinstance(arguments.get(key), str):
                names.append(arguments[key])
    if isinstance(data.get("model_name"), str):
        names.append(data["model_name"])
    return tuple(dict.fromkeys(os.path.basename(name.strip().rstrip("/\\")) for name in names if name.strip()))


def file_time(path: str, data: dict) -> float:
    match = TIMESTAMP.search(os.path.basename(path))
    if match:
        try:
            return time.mktime(time.strptime(match.group(1), "%Y-%m-%dT%H-%M-%S"))
        except (ValueError, OverflowError):
            pass
    if isinstance(data.get("date"), (int, float)) and not isinstance(data.get("date"), bool):
        return float(data["date"])
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def newest_per_task(files: list[ResultsFile]) -> dict:
    """task -> TaskResult, each from the newest file that has the task (ties: the later path)."""
    chosen: dict[str, TaskResult] = {}
    for results in sorted(files, key=lambda item: (item.timestamp, item.path)):
        for task, metrics in results.tasks.items():
            chosen[task] = TaskResult(task=task, metrics=metrics,
                                      higher_is_better=results.higher_is_better.get(task, {}),
                                      source=results.path, is_subtask=task in results.subtasks)
    return chosen


# -- choosing what to show ------------------------------------------------------------------------


def parse_metric_choices(items) -> MetricChoice:
    """`--metric acc --metric arc_challenge=acc_norm`: a bare name is preferred for every task,
    TASK=METRIC picks one task's metric. One choice per flag: commas belong to the harness's metric
    keys (`exact_match,strict-match`); its default filter may be written or left out (`acc,none`)."""
    preference, per_task = [], {}
    for item in items or ():
        item = str(item).strip()
        if "=" in item:
            task, metric = (side.strip() for side in item.split("=", 1))
            per_task[task] = metric_key(*metric.partition(",")[::2])
        elif item:
            preference.append(metric_key(*item.partition(",")[::2]))
    return MetricChoice(preference=tuple(preference), per_task=per_task)


def metric_rank(key: str, preference: tuple) -> tuple:
    name = key.split(",", 1)[0]
    order = list(preference) + list(DEFAULT_PREFERENCE)
    if key in preference:
        return (preference.index(key), 0, key)
    rank = order.index(name) if name in order else len(order)
    return (rank, 0 if "," not in key else 1, key)


def choose_metric(task: str, metric_sets: list, choice: MetricChoice, problems: list) -> str | None:
    """The metric for one task's column: the asked one if any model has it, else the most preferred
    metric that every model evaluated on the task has (so a column compares like with like)."""
    available = set().union(*metric_sets) if metric_sets else set()
    if not available:
        return None
    asked = choice.per_task.get(task)
    if asked is not None:
        if asked in available:
            return asked
        problems.append(f"--metric {task}={asked}: no results have it (available: {', '.join(sorted(available))}); "
                        "using the default")
    ranked = sorted(available, key=lambda key: metric_rank(key, choice.preference))
    everywhere = [key for key in ranked if all(key in metrics for metrics in metric_sets)]
    return (everywhere or ranked)[0]


def higher_is_better(metric: str, declared: list) -> bool:
    """What the results files declare, else known perplexity-like names are lower-is-better."""
    for directions in declared:
        if metric in directions:
            return directions[metric]
        name = metric.split(",", 1)[0]
        if name in directions:
            return directions[name]
    return metric.split(",", 1)[0] not in LOWER_IS_BETTER


def build_scoreboard(scores: dict, choice: MetricChoice | None = None, tasks: tuple = (),
                     show_subtasks: bool = False) -> tuple[Scoreboard, list]:
    """`scores`: model name -> {task: TaskResult}, in display order. Returns the scoreboard and
    one-line problems (a chosen task nobody has, a metric that does not exist)."""
    choice = choice or MetricChoice()
    problems: list[str] = []
    every_task = list(dict.fromkeys(task for per_model in scores.values() for task in per_model))
    if tasks:
        missing = [task for task in tasks if task not in every_task]
        if missing:
            problems.append(f"--tasks: no results for {', '.join(missing)}")
        shown = [task for task in tasks if task in every_task]
    else:
        subtasks = {task for per_model in scores.values() for task, result in per_model.items() if result.is_subtask}
        shown = sorted(task for task in every_task if show_subtasks or task not in subtasks)
    everything = {metric for per_model in scores.values() for result in per_model.values() for metric in result.metrics}
    for preferred in choice.preference:
        if preferred not in everything and preferred.split(",", 1)[0] not in {key.split(",", 1)[0] for key in everything}:
            problems.append(f"--metric {preferred}: no results have it (available: {', '.join(sorted(everything))}); "
                            "using the defaults")
    columns, values = [], {name: {} for name in scores}
    for task in shown:
        results = [per_model[task] for per_model in scores.values() if task in per_model]
        metric = choose_metric(task, [set(result.metrics) for result in results], choice, problems)
        if metric is None:
            continue
        direction = higher_is_better(metric, [result.higher_is_better for result in results])
        task_values = {name: per_model[task].metrics[metric] for name, per_model in scores.items()
                       if task in per_model and metric in per_model[task].metrics}
        percent = direction and all(0.0 <= value <= 1.0 for value in task_values.values())
        columns.append(TaskColumn(task=task, metric=metric, higher_is_better=direction, percent=percent))
        for name, value in task_values.items():
            values[name][task] = value
    average_over, averages, notes = average_tasks(columns, values)
    for column in columns:
        notes.append(f"{column.task}: {column.metric}" + ("" if column.higher_is_better else " (lower is better)"))
    return Scoreboard(columns=tuple(columns), values=values, average_over=average_over, averages=averages,
                      notes=tuple(notes)), problems


def average_tasks(columns: list, values: dict) -> tuple[tuple, dict, list]:
    """The average is over the accuracy-like tasks (higher is better, 0-1) that every evaluated model
    has: an average over different task sets would compare different things, and perplexities are
    on another scale altogether. A model with no accuracy task (only perplexities) has no average
    and takes none away from the others."""
    candidates = [column.task for column in columns if column.percent]
    evaluated = [name for name, per_model in values.items() if any(task in per_model for task in candidates)]
    common = tuple(task for task in candidates if evaluated and all(task in values[name] for name in evaluated))
    notes = []
    if not common:
        if candidates:
            notes.append("no average: no accuracy task is shared by every evaluated model")
        return (), {}, notes
    left_out = [task for task in candidates if task not in common]
    notes.append(f"average over {', '.join(common)}"
                 + (f" (not {', '.join(left_out)}: not every evaluated model has them)" if left_out else ""))
    averages = {name: sum(values[name][task] for task in common) / len(common) for name in evaluated}
    return common, averages, notes
