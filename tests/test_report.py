"""`prunescope report`: tables, plots and HTML from real analyses (run_batch on tiny checkpoints built
here) joined with lm-evaluation-harness results files written here in both layouts. Every number in
the Markdown, CSV and LaTeX tables is checked against the analysis JSON and the results files."""

import csv
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest
import torch

import builders
from prunescope.batch import run_batch
from prunescope.report import evals, tables
from prunescope.report.command import parse_formats, run_report
from prunescope.report.evals import build_scoreboard, parse_metric_choices
from prunescope.report.study import load_study, names_the_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Plots need matplotlib (the `report` extra); tables and HTML are checked without it too.
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
BASE = "Llama-base"
ANALYSED = ("LLM-Pruner_20", "ShortGPT_remove_2", "Wanda_2:4")
# What each model's results files say (newest file per task), and what the report must show:
# arc_easy: Wanda has no acc_norm, so the column is acc for everyone; piqa: acc_norm everywhere;
# wikitext: a perplexity (lower is better, kept out of the average); mmlu's subtask hidden.
SCORES = {
    BASE: {"arc_easy": 0.60, "mmlu": 0.40, "piqa": 0.79, "wikitext": 20.1},
    "LLM-Pruner_20": {"arc_easy": 0.50, "mmlu": 0.27, "piqa": 0.65, "wikitext": 28.0},
    "ShortGPT_remove_2": {"arc_easy": 0.45, "mmlu": 0.25, "piqa": 0.61, "wikitext": 35.2},
    "Wanda_2:4": {"arc_easy": 0.52, "mmlu": 0.30, "piqa": 0.67},
    "Orphan-run": {"arc_easy": 0.35, "mmlu": 0.22, "piqa": 0.51},
}
METRICS = {"arc_easy": "acc", "mmlu": "acc", "piqa": "acc_norm", "wikitext": "word_perplexity"}
AVERAGED = ("arc_easy", "mmlu", "piqa")


def new_layout(tasks: dict, model_args: str = "pretrained=/models/x", groups: dict | None = None) -> dict:
    """lm-evaluation-harness 0.4: "metric,filter" keys, stderr beside each, alias, group_subtasks."""
    results, directions = {}, {}
    for task, metrics in tasks.items():
        results[task] = {"alias": task}
        for metric, value in metrics.items():
            results[task][f"{metric},none"] = value
            results[task][f"{metric}_stderr,none"] = 0.012
        directions[task] = {metric: "perplexity" not in metric for metric in metrics}
    data = {"results": results, "versions": {task: 1.0 for task in tasks}, "n-shot": {task: 0 for task in tasks},
            "higher_is_better": directions, "config": {"model": "hf", "model_args": model_args, "batch_size": 8},
            "git_hash": "abc1234", "date": 1767225600.0}
    if groups:
        data["group_subtasks"] = groups
    return data


def old_layout(tasks: dict, model_args: str = "pretrained=/models/x") -> dict:
    """lm-evaluation-harness 0.3 results.json: plain metric keys."""
    results = {task: {**metrics, **{f"{metric}_stderr": 0.01 for metric in metrics}} for task, metrics in tasks.items()}
    return {"results": results, "versions": {task: 0 for task in tasks},
            "config": {"model": "hf-causal", "model_args": model_args, "num_fewshot": 0}}


def write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def build_study(root):
    """A base outside the models folder; three pruned models (unstructured zeros, removed layers,
    LLM-Pruner-style smaller projections); the base's scores in a results-only folder; a results
    folder that belongs to no model; a corrupt results file."""
    base = builders.llama(num_hidden_layers=6)
    base.save_pretrained(root / "base" / BASE)
    models = root / "models"

    wanda = builders.llama(num_hidden_layers=6)
    wanda.load_state_dict(base.state_dict())
    with torch.no_grad():
        for layer in wanda.model.layers:
            for parameter in layer.mlp.parameters():
                parameter[parameter.abs() < parameter.abs().median()] = 0
    wanda.save_pretrained(models / "Wanda_2:4")
    write(models / "Wanda_2:4" / "results_2026-03-01T10-00-00.123456.json", new_layout(
        {"arc_easy": {"acc": 0.52}, "piqa": {"acc": 0.66, "acc_norm": 0.67}, "mmlu": {"acc": 0.30},
         "mmlu_abstract_algebra": {"acc": 0.21}}, groups={"mmlu": ["mmlu_abstract_algebra"]}))

    shortgpt = builders.llama(num_hidden_layers=6)
    shortgpt.load_state_dict(base.state_dict())
    builders.remove_layers(shortgpt, [2, 4])
    shortgpt.save_pretrained(models / "ShortGPT_remove_2")
    write(models / "ShortGPT_remove_2" / "lm_eval" / "results.json", old_layout(
        {"arc_easy": {"acc": 0.45, "acc_norm": 0.44}, "piqa": {"acc": 0.60, "acc_norm": 0.61},
         "mmlu": {"acc": 0.25}, "wikitext": {"word_perplexity": 35.2, "byte_perplexity": 1.7}}))

    pruner = builders.llama(num_hidden_layers=6)
    pruner.load_state_dict(base.state_dict())
    builders.prune_structurally(pruner, {1: (2, 1, 48), 2: (3, 2, 64), 3: (2, 1, 80)})
    pruner.save_pretrained(models / "LLM-Pruner_20")
    write(models / "LLM-Pruner_20" / "eval" / "LLM-Pruner_20" / "results_2026-01-01T00-00-00.json", new_layout(
        {"arc_easy": {"acc": 0.50, "acc_norm": 0.49}, "piqa": {"acc": 0.64, "acc_norm": 0.65},
         "mmlu": {"acc": 0.27}, "wikitext": {"word_perplexity": 28.0, "bits_per_byte": 0.8}}))
    write(models / "LLM-Pruner_20" / "eval" / "results_2026-02-02T00-00-00.json", '{"results": {"piqa": ')

    # The base's scores: two runs; the newer one redid piqa (0.79 replaces 0.75) and added tasks.
    write(models / f"{BASE}-eval" / "results_2026-01-01T00-00-00.json", new_layout(
        {"piqa": {"acc": 0.74, "acc_norm": 0.75}, "arc_easy": {"acc": 0.60, "acc_norm": 0.58}}))
    write(models / f"{BASE}-eval" / "results_2026-02-01T00-00-00.json", new_layout(
        {"piqa": {"acc": 0.78, "acc_norm": 0.79}, "mmlu": {"acc": 0.40}, "wikitext": {"word_perplexity": 20.1}}))
    write(models / "Orphan-run" / "results.json", old_layout(
        {"arc_easy": {"acc": 0.35}, "piqa": {"acc": 0.50, "acc_norm": 0.51}, "mmlu": {"acc": 0.22}},
        model_args="pretrained=/elsewhere/mystery-model"))
    out = root / "out"
    assert run_batch(str(models), base_model=str(root / "base" / BASE), output_dir=str(out), merge=True,
                     sparsity=True, device="cpu", out=io.StringIO()) == 0
    return base, out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    base, out = build_study(root)
    console = io.StringIO()
    status = run_report(str(out), out=console)
    batch = json.loads((out / "batch_analysis_results.json").read_text())
    analyses = {}
    for record in batch["models"]:
        if record["status"] == "analysed":
            folder = record["analysis_dir"]
            analyses[record["name"]] = (json.load(open(os.path.join(folder, "model_structure.json"))),
                                        json.load(open(os.path.join(folder, "model_comparison.json"))))
    return dict(root=root, out=out, base=base, status=status, console=console.getvalue(), analyses=analyses,
                base_compute=base_compute_oracle(base))


def base_compute_oracle(base, tokens: int = 2048) -> dict:
    """The base's prefill FLOPs at the default S (FlopCounterMode, eager forward) and its memory at the default
    context: parameter bytes plus the KV-cache tensors that forward leaves."""
    from torch.utils.flop_counter import FlopCounterMode

    base.config._attn_implementation = "eager"
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        output = base(torch.zeros((1, tokens), dtype=torch.long), use_cache=True)
    cache = sum(tensor.numel() * tensor.element_size() for layer in output.past_key_values.layers
                for tensor in (layer.keys, layer.values))
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    return {"flops": counter.get_total_flops(), "memory": weights + cache}


def expected_rows(report) -> dict:
    """Every table value, computed here from the analysis JSON, the base module and SCORES."""
    rows = {}
    for name, (structure, comparison) in report["analyses"].items():
        layers = structure["layers"]
        head = 0 if structure["tied_embeddings"] else structure["lm_head_params"]
        rows[name] = {
            "kind": "huggingface", "total_params": structure["total_params"],
            "reduction_ratio": comparison["total_params"]["reduction_ratio"],
            "num_layers": structure["layer_summary"]["num_layers"],
            "attention_params": sum(layer["attention"]["total"] for layer in layers),
            "mlp_params": sum(layer["mlp"]["total"] for layer in layers),
            "embedding_params": structure["embedding_params"] + head + structure["position_embedding_params"],
            "nonzero_params": structure["nonzero_params"], "sparsity": structure["sparsity"],
            "prefill_macs": structure["compute"]["prefill_macs"],
            "prefill_flops_reduction_ratio": comparison["compute"]["prefill_flops"]["reduction_ratio"],
            "memory_bytes": structure["compute"]["memory_bytes"]}
    base = report["base"]  # the base is not analysed on its own: checked against the module itself
    rows[BASE] = {"kind": "base", "total_params": base.num_parameters(), "reduction_ratio": 0.0, "num_layers": 6,
                  "attention_params": sum(p.numel() for layer in base.model.layers for p in layer.self_attn.parameters()),
                  "mlp_params": sum(p.numel() for layer in base.model.layers for p in layer.mlp.parameters()),
                  "embedding_params": base.model.embed_tokens.weight.numel() + base.lm_head.weight.numel(),
                  "nonzero_params": sum(int((p != 0).sum()) for p in base.parameters()), "sparsity": 0.0,
                  "prefill_macs": report["base_compute"]["flops"] // 2, "prefill_flops_reduction_ratio": 0.0,
                  "memory_bytes": report["base_compute"]["memory"]}
    rows["Orphan-run"] = {"kind": "results only", "total_params": None, "reduction_ratio": None, "num_layers": None,
                          "attention_params": None, "mlp_params": None, "embedding_params": None,
                          "nonzero_params": None, "sparsity": None, "prefill_macs": None,
                          "prefill_flops_reduction_ratio": None, "memory_bytes": None}
    for name, row in rows.items():
        for task, metric in METRICS.items():
            row[f"{task}/{metric}"] = SCORES[name].get(task)
        row["average"] = sum(SCORES[name][task] for task in AVERAGED) / len(AVERAGED)
    return rows


def best_per_column(rows: dict) -> dict:
    """Column -> the names whose value is bold: best among the non-base rows, as shown (rounded)."""
    best = {}
    for key in [f"{task}/{metric}" for task, metric in METRICS.items()] + ["average"]:
        lower = key.startswith("wikitext")
        shown = {name: round(row[key] * (1 if lower else 100), 2) for name, row in rows.items()
                 if name != BASE and row[key] is not None}
        target = (min if lower else max)(shown.values())
        best[key] = {name for name, value in shown.items() if value == target}
    return best


def parse_params(text: str) -> float:
    scale = {"B": 1e9, "M": 1e6, "K": 1e3}
    return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text)


def check_shown(key: str, text: str, want) -> None:
    """A Markdown / LaTeX cell says what the JSON says, at the shown precision."""
    if want is None:
        assert text in ("-", "--"), (key, text)
    elif key.endswith("params"):
        assert parse_params(text) == pytest.approx(want, rel=5e-3), (key, text, want)
        assert re.fullmatch(r"\d+(\.\d+)?[KMB]?", text), text
    elif key == "prefill_macs":
        assert parse_params(text) == pytest.approx(want, rel=5e-3), (key, text, want)
    elif key == "memory_bytes":
        number, unit = text.split()
        assert float(number) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit] == pytest.approx(
            want, rel=5e-3), (key, text, want)
    elif key in ("reduction_ratio", "prefill_flops_reduction_ratio"):
        assert float(text.rstrip("%")) == pytest.approx(-want * 100, abs=0.05 + 1e-9), (text, want)
    elif key == "sparsity":
        assert float(text.rstrip("%")) == pytest.approx(want * 100, abs=0.05 + 1e-9), (text, want)
    elif key.startswith("wikitext"):
        assert text == f"{want:.2f}", (key, text, want)
    elif key == "num_layers":
        assert int(text) == want
    elif key == "kind":
        assert text == want
    else:
        assert text == f"{want * 100:.2f}", (key, text, want)


# -- the whole report ---------------------------------------------------------------------------


def test_report_writes_every_format_and_says_what_went_wrong(report):
    out = report["out"]
    assert report["status"] == 0, report["console"]
    names = ["tables/summary.md", "tables/summary.csv", "tables/layers.csv", "tables/summary.tex", "report.html"]
    if HAVE_MATPLOTLIB:
        names += ["plots/depth_profile.png", "plots/depth_profile.svg", "plots/kept_heatmap.png",
                  "plots/composition.svg", "plots/sparsity_profile.png", "plots/accuracy_vs_params.png"]
    for name in names:
        assert (out / name).is_file(), name
    warnings = [line for line in report["console"].splitlines()
                if line.startswith("⚠") and (HAVE_MATPLOTLIB or "matplotlib" not in line)]
    # The corrupt results file: one line naming it, and the rest of that model's results still used.
    assert len(warnings) == 1 and "results_2026-02-02T00-00-00.json" in warnings[0] and "not valid JSON" in warnings[0]
    assert not list(report["root"].rglob(".tmp-*"))


def test_csv_numbers_are_the_analyses_and_the_results_files(report):
    rows = list(csv.DictReader(open(report["out"] / "tables" / "summary.csv", encoding="utf-8")))
    expected = expected_rows(report)
    assert [row["model"] for row in rows] == [BASE, *ANALYSED, "Orphan-run"]
    assert [row["role"] for row in rows] == ["base", "pruned", "pruned", "pruned", "results"]
    for row in rows:
        want = expected[row["model"]]
        assert set(row) == {"role", "model", *want}, set(row) ^ {"role", "model", *want}
        for key, value in want.items():
            if value is None:
                assert row[key] == "", (row["model"], key)
            elif isinstance(value, str):
                assert row[key] == value
            elif isinstance(value, int):
                assert int(row[key]) == value, (row["model"], key)
            else:
                assert float(row[key]) == pytest.approx(value, abs=1e-12), (row["model"], key)


def test_markdown_cells_and_bold_match_the_json(report):
    text = (report["out"] / "tables" / "summary.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:8] == ["Model", "Kind", "Params", "vs base", "Layers", "Attention", "MLP", "Embedding"]
    assert header[8:] == ["Nonzero", "Sparsity", "MACs (S=2048)", "MACs vs base", "Memory (L=2048)", "arc_easy (acc)", "mmlu (acc)", "piqa (acc_norm)",
                          "wikitext (word_perplexity)", "Average (mean)"]
    keys = ["model", "kind", "total_params", "reduction_ratio", "num_layers", "attention_params", "mlp_params",
            "embedding_params", "nonzero_params", "sparsity", "prefill_macs", "prefill_flops_reduction_ratio",
            "memory_bytes"] + [f"{task}/{metric}" for task, metric in METRICS.items()] + ["average"]
    expected = expected_rows(report)
    best = best_per_column(expected)
    bold_seen = set()
    for line in lines[2:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        name = cells[0]
        for key, cell in zip(keys[1:], cells[1:], strict=True):
            if cell.startswith("**"):
                bold_seen.add((key, name))
                cell = cell.strip("*")
            check_shown(key, cell, expected[name][key])
    assert bold_seen == {(key, name) for key, names in best.items() for name in names}
    assert "average over arc_easy, mmlu, piqa" in text
    assert "mmlu_abstract_algebra" not in text  # a group's subtask is hidden behind the group


def test_latex_cells_escapes_and_bold(report):
    text = (report["out"] / "tables" / "summary.tex").read_text(encoding="utf-8")
    assert r"\toprule" in text and r"\midrule" in text and r"\bottomrule" in text
    assert r"Wanda\_2:4" in text and "Wanda_2:4" not in text
    body = text.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    keys = ["kind", "total_params", "reduction_ratio", "num_layers", "attention_params", "mlp_params",
            "embedding_params", "nonzero_params", "sparsity", "prefill_macs", "prefill_flops_reduction_ratio",
            "memory_bytes"] + [f"{task}/{metric}" for task, metric in METRICS.items()] + ["average"]
    expected = expected_rows(report)
    best = best_per_column(expected)
    seen, bold_seen = [], set()
    for line in body.splitlines():
        if not line.endswith(r"\\"):
            continue
        cells = [cell.strip() for cell in line[:-2].split(" & ")]
        name = cells[0].replace(r"\_", "_")
        seen.append(name)
        for key, cell in zip(keys, cells[1:], strict=True):
            match = re.fullmatch(r"\\textbf\{(.*)\}", cell)
            if match:
                bold_seen.add((key, name))
                cell = match.group(1)
            check_shown(key, cell.replace("$-$", "-").replace(r"\%", "%"), expected[name][key])
    assert seen == [BASE, *ANALYSED, "Orphan-run"]
    assert bold_seen == {(key, name) for key, names in best.items() for name in names}


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex here")
def test_latex_compiles(report, tmp_path):
    table = (report["out"] / "tables" / "summary.tex").read_text(encoding="utf-8")
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
                                        "\\begin{document}\n" + table + "\\end{document}\n", encoding="utf-8")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000


def test_layers_csv_is_every_layer_of_every_analysis(report):
    rows = list(csv.DictReader(open(report["out"] / "tables" / "layers.csv", encoding="utf-8")))
    for name, (structure, comparison) in report["analyses"].items():
        mine = [row for row in rows if row["model"] == name]
        assert [int(row["total"]) for row in mine] == [layer["total"] for layer in structure["layers"]]
        assert [int(row["attention"]) for row in mine] == [layer["attention"]["total"] for layer in structure["layers"]]
        assert [row["base_layer_idx"] for row in mine] == [str(layer["original_layer_idx"]) for layer in comparison["layers"]]
    shortgpt = [row for row in rows if row["model"] == "ShortGPT_remove_2"]
    assert [int(row["base_layer_idx"]) for row in shortgpt] == [0, 1, 3, 5]
    base = [row for row in rows if row["role"] == "base"]
    assert [int(row["total"]) for row in base] == [sum(p.numel() for p in layer.parameters())
                                                   for layer in report["base"].model.layers]



def zero_in_place(model, head_dim: int = 16) -> None:
    """Soft structured pruning (FLAP, torch-pruning): query head 1 of layer 0, KV head 0 of layer 1
    and ten MLP channels of layer 2 zeroed, the shapes unchanged."""
    with torch.no_grad():
        attention = model.model.layers[0].self_attn
        attention.q_proj.weight[head_dim:2 * head_dim] = 0
        attention.o_proj.weight[:, head_dim:2 * head_dim] = 0
        attention = model.model.layers[1].self_attn
        attention.k_proj.weight[:head_dim] = 0
        attention.v_proj.weight[:head_dim] = 0
        mlp = model.model.layers[2].mlp
        mlp.gate_proj.weight[:10] = 0
        mlp.up_proj.weight[:10] = 0
        mlp.down_proj.weight[:, :10] = 0


def html_layer_rows(html: str, model: str) -> list[list[str]]:
    """The cells of one model's per-layer table in report.html."""
    section = html.split(f"<summary>{model} ", 1)[1].split("</details>", 1)[0]
    table = section.split("<th>layer</th>", 1)[1].split("</table>", 1)[0]
    header = ["layer"] + re.findall(r"<th>(.*?)</th>", table.split("</thead>", 1)[0])
    return [dict(zip(header, re.findall(r"<td>(.*?)</td>", row), strict=True))
            for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1])]


def test_soft_structured_pruning_shows_in_layers_csv_html_summary_and_heatmap(tmp_path):
    torch.manual_seed(0)
    base = builders.llama(num_hidden_layers=4)
    base.save_pretrained(tmp_path / "base" / BASE)
    soft = builders.llama(num_hidden_layers=4)
    soft.load_state_dict(base.state_dict())
    zero_in_place(soft)
    soft.save_pretrained(tmp_path / "models" / "FLAP_soft")
    shapes, scan = tmp_path / "shapes", tmp_path / "scan"
    for out, sparsity in ((shapes, False), (scan, True)):
        assert run_batch(str(tmp_path / "models"), base_model=str(tmp_path / "base" / BASE), output_dir=str(out),
                         sparsity=sparsity, force=True, device="cpu", out=io.StringIO()) == 0
        assert run_report(str(out), out=io.StringIO()) == 0
    folder = tmp_path / "models" / "FLAP_soft" / "analysis"
    structure = json.loads((folder / "model_structure.json").read_text())
    comparison = json.loads((folder / "model_comparison.json").read_text())
    attention = [layer["attention"] for layer in structure["layers"]]
    mlp = [layer["mlp"] for layer in structure["layers"]]
    assert [(a["effective_heads"], a["effective_kv_heads"], m["effective_intermediate_size"])
            for a, m in zip(attention, mlp)][:3] == [(3, 2, 96), (4, 1, 96), (4, 2, 86)]

    # layers.csv: the scan's per-layer fields, as in the JSON; the base's heads are not scanned.
    fields = {"effective_heads": ("attention", "effective_heads"),
              "effective_kv_heads": ("attention", "effective_kv_heads"),
              "effective_intermediate_size": ("mlp", "effective_intermediate_size"), "nonzero": (None, "nonzero"),
              "sparsity": (None, "sparsity")}
    rows = list(csv.DictReader(open(scan / "tables" / "layers.csv", encoding="utf-8")))
    mine = [row for row in rows if row["model"] == "FLAP_soft"]
    for row, layer in zip(mine, structure["layers"], strict=True):
        for field, (part, key) in fields.items():
            want = (layer[part] if part else layer)[key]
            assert (float(row[field]) if field == "sparsity" else int(row[field])) == want, (field, row)
    base_rows = [row for row in rows if row["role"] == "base"]
    assert [int(row["nonzero"]) for row in base_rows] == [layer["nonzero"]["original"]
                                                          for layer in comparison["layers"]]
    assert all(row["effective_heads"] == "" for row in base_rows)
    unscanned = list(csv.DictReader(open(shapes / "tables" / "layers.csv", encoding="utf-8")))
    assert unscanned and all(row[field] == "" for row in unscanned for field in fields)

    # The summary: a Nonzero column beside Sparsity, only when scanned; plain counts in the CSV.
    summary = {row["model"]: row for row in csv.DictReader(open(scan / "tables" / "summary.csv", encoding="utf-8"))}
    assert int(summary["FLAP_soft"]["nonzero_params"]) == structure["nonzero_params"] < structure["total_params"]
    assert int(summary[BASE]["nonzero_params"]) == comparison["nonzero_params"]["original"]
    header = (scan / "tables" / "summary.md").read_text(encoding="utf-8").splitlines()[0]
    assert "| Nonzero | Sparsity |" in header
    assert r"Nonzero & Sparsity" in (scan / "tables" / "summary.tex").read_text(encoding="utf-8")
    assert "nonzero_params" not in (shapes / "tables" / "summary.csv").read_text(encoding="utf-8")
    assert "Nonzero" not in (shapes / "tables" / "summary.md").read_text(encoding="utf-8")

    # HTML: heads, KV heads and channels left after zeroing, as "3/4"; nonzero per layer.
    html = html_layer_rows((scan / "report.html").read_text(encoding="utf-8"), "FLAP_soft")
    for row, a, m, layer in zip(html, attention, mlp, structure["layers"], strict=True):
        for cell, effective, shape in ((row["heads"], a["effective_heads"], a["num_heads"]),
                                       (row["KV heads"], a["effective_kv_heads"], a["num_kv_heads"]),
                                       (row["intermediate"], m["effective_intermediate_size"], m["intermediate_size"])):
            assert cell == (f"{effective}/{shape}" if effective < shape else str(shape)), row
        assert row["nonzero"] == f"{layer['nonzero']:,}"
    assert [row["heads"] for row in html_layer_rows((shapes / "report.html").read_text(encoding="utf-8"),
                                                    "FLAP_soft")] == ["4"] * 4

    # The nonzero heatmap: the share of the base's nonzero attention / MLP parameters kept per layer.
    from prunescope.report.plots import kept_shares

    model = next(model for model in load_study(str(scan)).models if model.name == "FLAP_soft")
    for part in ("attention", "mlp"):
        assert kept_shares(model, part, 4, nonzero=True) == pytest.approx(
            [layer[part]["nonzero"] / compared[part]["nonzero"]["original"]
             for layer, compared in zip(structure["layers"], comparison["layers"], strict=True)])
        assert kept_shares(model, part, 4) == [1.0] * 4  # the shapes say nothing
    if HAVE_MATPLOTLIB:
        assert (scan / "plots" / "nonzero_heatmap.png").is_file()
        assert not (shapes / "plots" / "nonzero_heatmap.png").exists()
        check_images(scan / "plots")

# -- evaluation results -------------------------------------------------------------------------


def test_metric_choice_tasks_and_subtasks_can_be_chosen(report):
    study = load_study(str(report["out"]))
    scores = {model.name: model.scores for model in study.models}
    board, problems = build_scoreboard(scores, parse_metric_choices(["piqa=acc", "arc_easy=nonsense"]))
    assert {column.task: column.metric for column in board.columns}["piqa"] == "acc"
    assert board.values[BASE]["piqa"] == 0.78
    assert len(problems) == 1 and "arc_easy=nonsense" in problems[0]
    board, _ = build_scoreboard(scores, parse_metric_choices(["acc_norm,none"]), tasks=("piqa", "arc_easy"))
    assert [(column.task, column.metric) for column in board.columns] == [("piqa", "acc_norm"), ("arc_easy", "acc")]
    board, _ = build_scoreboard(scores, show_subtasks=True)
    assert "mmlu_abstract_algebra" in [column.task for column in board.columns]
    _, problems = build_scoreboard(scores, parse_metric_choices(["f1"]))  # a metric nobody reports
    assert len(problems) == 1 and "--metric f1" in problems[0]


def test_a_model_with_only_perplexities_leaves_the_others_their_average():
    from prunescope.report.evals import TaskResult

    def scores(**tasks):
        return {task: TaskResult(task, {metric: value}, {}, "results.json") for task, (metric, value) in tasks.items()}

    board, problems = build_scoreboard({
        "base": scores(wikitext=("word_perplexity", 11.0)),
        "a": scores(arc_easy=("acc", 0.6), piqa=("acc_norm", 0.7), wikitext=("word_perplexity", 14.0)),
        "b": scores(arc_easy=("acc", 0.5), piqa=("acc_norm", 0.8))})
    assert not problems
    assert board.average_over == ("arc_easy", "piqa")
    assert board.averages == pytest.approx({"a": 0.65, "b": 0.65})


def test_slicegpt_shortcuts_get_a_column_so_that_the_parts_add_up(tmp_path):
    from test_slicegpt import write_slicegpt

    import builders

    base = builders.llama()
    write_slicegpt(tmp_path / "models" / "SliceGPT", "llama_0.25", base, "llama", 48)
    assert run_batch(str(tmp_path / "models"), output_dir=str(tmp_path / "out"), out=io.StringIO()) == 0
    assert run_report(str(tmp_path / "out"), formats=("csv",), out=io.StringIO()) == 0
    structure = json.loads((tmp_path / "models" / "SliceGPT" / "analysis" / "model_structure.json").read_text())
    with open(tmp_path / "out" / "tables" / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    shortcuts = sum(layer["shortcut"] for layer in structure["layers"])
    assert int(row["other_params"]) == shortcuts + structure["other_params"] > 0
    norms = structure["final_norm_params"] + sum(layer["norm"] for layer in structure["layers"])
    parts = sum(int(row[column]) for column in ("attention_params", "mlp_params", "embedding_params", "other_params"))
    assert parts + norms == structure["total_params"] == int(row["total_params"])


def test_a_rebuilt_opt_base_counts_its_position_embeddings_as_embedding(tmp_path):
    from test_families import opt

    base = opt()
    base.save_pretrained(tmp_path / "base" / "OPT-base")
    pruned = opt()
    pruned.load_state_dict(base.state_dict())
    with torch.no_grad():
        pruned.model.decoder.layers[0].fc1.weight[:8] = 0
    pruned.save_pretrained(tmp_path / "models" / "OPT-zeroed")
    assert run_batch(str(tmp_path / "models"), base_model=str(tmp_path / "base" / "OPT-base"),
                     output_dir=str(tmp_path / "out"), out=io.StringIO()) == 0
    assert run_report(str(tmp_path / "out"), formats=("csv",), out=io.StringIO()) == 0
    rows = {row["model"]: row for row in csv.DictReader(open(tmp_path / "out" / "tables" / "summary.csv"))}
    decoder = base.model.decoder
    embedding = decoder.embed_tokens.weight.numel() + decoder.embed_positions.weight.numel()  # the head is tied
    assert int(rows["OPT-base"]["embedding_params"]) == int(rows["OPT-zeroed"]["embedding_params"]) == embedding
    assert "other_params" not in rows["OPT-base"]  # no Other column: nothing left over in either model


def test_reading_both_layouts_and_the_newest_file_per_task(tmp_path):
    write(tmp_path / "a" / "results_2026-01-01T00-00-00.json", new_layout({"piqa": {"acc": 0.1}, "boolq": {"acc": 0.2}}))
    write(tmp_path / "a" / "deeper" / "results_2026-05-01T00-00-00.json", new_layout({"piqa": {"acc": 0.3}}))
    write(tmp_path / "a" / "results.json", old_layout({"lambada": {"ppl": 4.5, "acc": 0.6}}))
    write(tmp_path / "a" / "analysis" / "results.json", old_layout({"piqa": {"acc": 0.9}}))  # our own output: skipped
    os.utime(tmp_path / "a" / "results.json", (0, 0))  # no timestamp in the name: its mtime, the oldest
    files = [evals.read_results_file(path) for path in evals.find_results_files(str(tmp_path / "a"))]
    assert len(files) == 3
    newest = evals.newest_per_task(files)
    assert newest["piqa"].metrics == {"acc": 0.3} and newest["piqa"].source.endswith("05-01T00-00-00.json")
    assert newest["boolq"].metrics == {"acc": 0.2}
    assert newest["lambada"].metrics == {"ppl": 4.5, "acc": 0.6}
    board, _ = build_scoreboard({"m": newest})
    assert {column.task: column.metric for column in board.columns}["lambada"] == "acc"
    assert evals.higher_is_better("word_perplexity", [{}]) is False
    for text, reason in (("{", "not valid JSON"), ("[]", "no 'results'"), ('{"results": {"x": {"alias": "x"}}}',
                                                                            "no numeric scores")):
        write(tmp_path / "bad" / "results.json", text)
        with pytest.raises(evals.EvalError, match=reason) as raised:
            evals.read_results_file(str(tmp_path / "bad" / "results.json"))
        assert "\n" not in str(raised.value) and "results.json" in str(raised.value)


def test_results_only_folders_are_matched_to_the_base_by_name_or_model_args(tmp_path):
    assert names_the_model("Llama-3-8B", "Llama-3-8B")
    assert names_the_model("llama-3-8b_eval", "Llama-3-8B")
    assert names_the_model("lm-eval-Llama-3-8B", "Llama-3-8B")
    assert names_the_model("Llama-3-8B.results", "Llama-3-8B")
    assert not names_the_model("Llama-3-8B-Instruct", "Llama-3-8B")
    assert not names_the_model("Llama-3-8B-Instruct-eval", "Llama-3-8B")
    models = tmp_path / "models"
    write(models / "scores_from_march" / "results_2026-03-01T00-00-00.json",
          new_layout({"piqa": {"acc": 0.8}}, model_args="pretrained=/data/Llama-3-8B,dtype=bfloat16"))
    write(models / "mystery" / "results.json", old_layout({"piqa": {"acc": 0.4}}))
    write(models / "chosen" / "results.json", old_layout({"boolq": {"acc": 0.7}}))
    out = tmp_path / "out"
    batch = {"models_dir": str(models), "base_model": "/data/Llama-3-8B", "models": [
        {"name": name, "path": str(models / name), "status": "skipped", "kind": None,
         "reason": "no model files (only evaluation results)"} for name in ("chosen", "mystery", "scores_from_march")]}
    write(out / "batch_analysis_results.json", batch)
    study = load_study(str(out))
    by_name = {model.name: model for model in study.models}
    assert by_name["Llama-3-8B"].role == "base" and by_name["Llama-3-8B"].scores["piqa"].metrics == {"acc": 0.8}
    assert by_name["mystery"].role == "results" and by_name["chosen"].role == "results"
    study = load_study(str(out), base_results="chosen")
    by_name = {model.name: model for model in study.models}
    assert set(by_name["Llama-3-8B"].scores) == {"piqa", "boolq"} and "chosen" not in by_name


def test_a_missing_analysis_is_one_line_and_the_report_goes_on(report, tmp_path):
    batch = json.loads((report["out"] / "batch_analysis_results.json").read_text())
    for record in batch["models"]:
        if record["name"] == "ShortGPT_remove_2":
            record["analysis_dir"] = str(tmp_path / "gone")
    write(tmp_path / "out" / "batch_analysis_results.json", batch)
    console = io.StringIO()
    assert run_report(str(tmp_path / "out"), formats=("md", "html"), out=console) == 0
    warnings = [line for line in console.getvalue().splitlines() if line.startswith("⚠")]
    assert any("ShortGPT_remove_2" in line and "re-run prunescope analyze" in line for line in warnings)
    table = (tmp_path / "out" / "tables" / "summary.md").read_text()
    assert "| LLM-Pruner_20 |" in table and "| ShortGPT_remove_2 |" not in table
    html = (tmp_path / "out" / "report.html").read_text()
    assert "ShortGPT_remove_2" in html and "Not in the report" in html
    console = io.StringIO()
    assert run_report(str(tmp_path / "nowhere"), out=console) == 1
    assert console.getvalue().count("\n") == 1 and "run `prunescope analyze" in console.getvalue()
    with pytest.raises(ValueError, match="pdf"):
        parse_formats("md,pdf")


# The original tool's schema (../shared/spec/): what prunescope added to it is optional to the report.
SPEC_STRUCTURE = {"model_name", "total_params", "embedding_params", "lm_head_params", "layer_summary", "layers"}
SPEC_LAYER = {"layer_idx", "total", "attention", "mlp", "norm", "is_zero_layer"}
SPEC_ATTENTION = {"type", "total", "q_proj", "k_proj", "v_proj", "o_proj", "num_heads", "num_kv_heads"}
SPEC_MLP = {"type", "total", "gate_proj", "up_proj", "down_proj", "intermediate_size"}
SPEC_COMPARISON = {"original_name", "pruned_name", "total_params", "layer_params", "layers"}


def only(data: dict, keys: set) -> dict:
    return {key: value for key, value in data.items() if key in keys}


def test_analyses_in_the_original_tools_schema_are_reported(report, tmp_path):
    batch = json.loads((report["out"] / "batch_analysis_results.json").read_text())
    for record in batch["models"]:
        if record["status"] != "analysed":
            continue
        structure, comparison = report["analyses"][record["name"]]
        structure = only(structure, SPEC_STRUCTURE)
        structure["layers"] = [{**only(layer, SPEC_LAYER), "attention": only(layer["attention"], SPEC_ATTENTION),
                                "mlp": only(layer["mlp"], SPEC_MLP)} for layer in structure["layers"]]
        comparison = only(comparison, SPEC_COMPARISON)
        comparison["layers"] = [{key: only(value, SPEC_ATTENTION | SPEC_MLP) if key in ("attention", "mlp") else value
                                 for key, value in layer.items() if key in SPEC_LAYER - {"norm"}}
                                for layer in comparison["layers"]]
        record["analysis_dir"] = str(tmp_path / record["name"])
        write(tmp_path / record["name"] / "model_structure.json", structure)
        write(tmp_path / record["name"] / "model_comparison.json", comparison)
    write(tmp_path / "out" / "batch_analysis_results.json", batch)
    console = io.StringIO()
    assert run_report(str(tmp_path / "out"), out=console) == 0, console.getvalue()
    rows = {row["model"]: row for row in csv.DictReader(open(tmp_path / "out" / "tables" / "summary.csv"))}
    for name, (structure, comparison) in report["analyses"].items():
        assert int(rows[name]["total_params"]) == structure["total_params"]
        assert float(rows[name]["reduction_ratio"]) == comparison["total_params"]["reduction_ratio"]
    assert int(rows[BASE]["total_params"]) == report["base"].num_parameters()
    assert rows[BASE]["num_layers"] == rows[BASE]["attention_params"] == ""  # unknown, not invented


def test_names_with_markup_characters_are_shown_as_they_are(report, tmp_path):
    import html as html_module

    name = r"W<b>5%</b>& *2:4* _x_ $\frac$#ü|"  # short enough to be shown whole on the plots
    batch = json.loads((report["out"] / "batch_analysis_results.json").read_text())
    for record in batch["models"]:
        if record["name"] == "Wanda_2:4":
            record["name"] = name
    write(tmp_path / "batch_analysis_results.json", batch)
    console = io.StringIO()
    assert run_report(str(tmp_path), out=console) == 0
    assert "not drawn" not in console.getvalue()  # matplotlib would read $\frac$ as a broken formula
    markdown = (tmp_path / "tables" / "summary.md").read_text(encoding="utf-8")
    line = next(line for line in markdown.splitlines() if "2:4" in line)
    assert line.startswith(r"| W\<b\>5%\</b\>\& \*2:4\* \_x\_ \$\\frac\$#ü\| | huggingface |")
    assert "| LLM-Pruner_20 |" in markdown  # an underscore inside a word is no markup: left as it is
    if importlib.util.find_spec("markdown_it"):
        from markdown_it import MarkdownIt

        rendered = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)
        cells = [html_module.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", rendered)]
        assert name in cells and "LLM-Pruner_20" in cells
    assert tables.latex_escape(name) in (tmp_path / "tables" / "summary.tex").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html_module.escape(name) in page and "<b>5%" not in page
    if HAVE_MATPLOTLIB:
        svg = ElementTree.parse(tmp_path / "plots" / "composition.svg").getroot()
        assert any(name in "".join(element.itertext()) for element in svg.iter())


def test_without_a_model_or_results_there_is_nothing_to_report(tmp_path):
    write(tmp_path / "out" / "batch_analysis_results.json", {"models_dir": str(tmp_path / "models"), "models": [
        {"name": "broken", "path": str(tmp_path / "models" / "broken"), "status": "error", "kind": "torch",
         "error": "truncated zip"},
        {"name": "notes", "path": str(tmp_path / "models" / "notes"), "status": "skipped", "kind": None,
         "reason": "no model files"}]})
    console = io.StringIO()
    assert run_report(str(tmp_path / "out"), out=console) == 1
    assert "nothing to report on" in console.getvalue()
    said = console.getvalue()
    assert "broken: error (truncated zip)" in said and "notes: skipped (no model files)" in said
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["batch_analysis_results.json"]


def test_the_caption_promises_bold_only_where_a_score_is_bold(report):
    study = load_study(str(report["out"]))
    board, _ = build_scoreboard({model.name: model.scores for model in study.models})
    assert "Best score among the pruned models in bold." in tables.summary_table(study, board).notes
    alone = study.replace(models=tuple(model for model in study.models if model.name in (BASE, "LLM-Pruner_20")))
    board, _ = build_scoreboard({model.name: model.scores for model in alone.models})
    table = tables.summary_table(alone, board)
    assert board.columns and not tables.best_cells(table)  # one contender: nothing to be best against
    assert not any("bold" in note for note in table.notes) and "**" not in tables.to_markdown(table)


def test_command_line_arguments(report, tmp_path):
    import argparse

    from prunescope.report.command import add_report_arguments, report_from_args

    shutil.copy(report["out"] / "batch_analysis_results.json", tmp_path / "batch_analysis_results.json")
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    args = parser.parse_args(["--output-dir", str(tmp_path), "--format", "md,CSV", "--metric", "piqa=acc",
                              "--tasks", "piqa,mmlu"])
    assert report_from_args(args) == 0
    assert sorted(path.name for path in (tmp_path / "tables").iterdir()) == ["layers.csv", "summary.csv", "summary.md"]
    assert not (tmp_path / "plots").exists() and not (tmp_path / "report.html").exists()
    header = (tmp_path / "tables" / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["piqa/acc", "mmlu/acc", "average"]
    assert report_from_args(parser.parse_args(["--output_dir", str(tmp_path), "--format", "md,docx"])) == 2


# -- plots --------------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check_images(folder) -> dict:
    image = pytest.importorskip("matplotlib.image")
    sizes = {}
    for path in sorted(folder.glob("*.png")):
        data = path.read_bytes()
        width, height = png_size(data)
        assert 500 <= width <= 4000 and 250 <= height <= 4000, (path.name, width, height)
        pixels = image.imread(io.BytesIO(data), format="png")
        assert pixels.shape[:2] == (height, width)
        assert pixels.std() > 0.02, path.name  # not a blank canvas
        sizes[path.stem] = (width, height)
    for path in sorted(folder.glob("*.svg")):
        root = ElementTree.parse(path).getroot()
        assert root.tag.endswith("svg"), path.name
        assert 5_000 < path.stat().st_size < 5_000_000
    return sizes


def test_plots_are_valid_images_of_sensible_size(report):
    pytest.importorskip("matplotlib")
    sizes = check_images(report["out"] / "plots")
    assert set(sizes) == {"depth_profile", "kept_heatmap", "nonzero_heatmap", "composition", "sparsity_profile",
                          "flops_profile", "memory_vs_context", "accuracy_vs_params"}


def test_accuracy_plot_x_axis_is_selectable(report, tmp_path):
    from prunescope.report.plots import accuracy_points, plan

    study = load_study(str(report["out"]))
    board, _ = build_scoreboard({model.name: model.scores for model in study.models})
    expected = expected_rows(report)
    for x, key in (("params", "total_params"), ("nonzero", "nonzero_params"), ("flops", "prefill_macs")):
        points = accuracy_points(study, board.averages, x)
        assert {point.name: point.params for point in points} == {
            name: row[key] for name, row in expected.items() if row[key] is not None and name in board.averages}
        captions = {stem: caption for stem, _, caption, _ in plan(study, board, False, x)}
        assert ("FlopCounterMode" in captions["accuracy_vs_params"]) == (x == "flops")
        assert "FlopCounterMode" in captions["flops_profile"]  # every figure with FLOPs states the convention
    if HAVE_MATPLOTLIB:
        assert run_report(str(report["out"]), formats=("png",), accuracy_x="flops", out=io.StringIO()) == 0


def test_plots_with_thirty_models_and_the_pareto_front(report, tmp_path):
    pytest.importorskip("matplotlib")
    from prunescope.report.evals import TaskResult
    from prunescope.report.plots import Point, pareto_front, write_plots

    points = [Point("a", 10, 0.5), Point("b", 20, 0.7), Point("c", 20, 0.6), Point("d", 30, 0.7), Point("e", 5, 0.1)]
    assert pareto_front(points) == [0, 1, 4]
    assert pareto_front([Point("p", 10, 9.0), Point("q", 20, 12.0), Point("r", 30, 5.0)], higher_is_better=False) == [0, 2]
    study = load_study(str(report["out"]))
    pruned = [model for model in study.models if model.role == "pruned"]
    many = [study.models[0]]
    for number in range(30):
        model = pruned[number % len(pruned)]
        scores = {task: TaskResult(task, {key: value * (1 - number / 100) for key, value in result.metrics.items()},
                                   {}, result.source) for task, result in model.scores.items()}
        many.append(model.replace(name=f"{model.name}-variant-{number}", scores=scores))
    crowded = study.replace(models=tuple(many))
    board, _ = build_scoreboard({model.name: model.scores for model in crowded.models})
    plots = write_plots(crowded, board, str(tmp_path / "plots"), ("png",), per_task=True)
    assert {plot.stem for plot in plots} >= {"depth_profile", "kept_heatmap", "composition", "accuracy_vs_params",
                                             "accuracy_vs_params_piqa", "accuracy_vs_params_wikitext"}
    sizes = check_images(tmp_path / "plots")
    few = check_images(report["out"] / "plots")
    assert sizes["composition"][1] > 2 * few["composition"][1]  # the bars keep their height per model


# -- HTML ---------------------------------------------------------------------------------------


def test_html_is_self_contained(report):
    html = (report["out"] / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<script" not in html and "@import" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == (8 if HAVE_MATPLOTLIB else 0)
    assert "FlopCounterMode" in html  # the convention the MACs follow, stated where they are shown
    assert "<th>MACs</th><th>MACs kept</th>" in html  # per layer, against the base layer
    import base64

    assert all(base64.b64decode(image)[:8] == PNG_MAGIC for image in images)
    assert html.count("<details>") == 5  # one per model: base, three pruned, the results-only folder
    assert "stale config" in html and "Wanda_2:4" in html and "not valid JSON" in html
    assert f"scores from the results-only folder {BASE}-eval (matched by its name)" in html


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="no headless Chromium here")
def test_html_renders_in_headless_chromium(report, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    screenshot = tmp_path / "screenshot.png"
    page = "file://" + str((report["out"] / "report.html").resolve())
    result = subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
                             "--window-size=1280,2000", page], capture_output=True, text=True, timeout=120)
    assert screenshot.exists(), result.stderr[-2000:]
    pixels = image.imread(str(screenshot))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    grey = pixels[..., :3].mean(axis=2)
    assert grey.std() > 0.05  # text, tables and plots: not a blank page
    assert (grey < 0.5).mean() > 0.005  # dark ink somewhere


# -- the rules of the package -------------------------------------------------------------------


def test_cli_import_stays_light():
    code = ("import sys, prunescope.cli, prunescope.report.command; "
            "heavy = [name for name in ('matplotlib', 'numpy', 'torch') if sys.modules.get(name)]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_value_formats():
    assert tables.format_params(8_030_261_248) == "8.03B"
    assert tables.format_params(68_719_476) == "68.7M"
    assert tables.format_params(805_306_368) == "805M"
    assert tables.format_params(9_996_000) == "10.0M"
    assert tables.format_params(158_528) == "159K"
    assert tables.format_params(512) == "512"
    assert tables.format_params(999_499) == "999K"
    assert tables.format_params(999_999) == "1.00M" and tables.format_params(999_600_000) == "1.00B"  # not 1000M
    assert tables.format_change(0.21340) == "-21.3%" and tables.format_change(-0.03) == "+3.0%"
    assert tables.latex_escape("Wanda_2:4 & 50% {x} #1 ~a^b \\ <|>") == (
        r"Wanda\_2:4 \& 50\% \{x\} \#1 \textasciitilde{}a\textasciicircum{}b \textbackslash{} "
        r"\textless{}\textbar{}\textgreater{}")
    assert math.isclose(evals.task_metrics({"acc,none": 1, "acc_stderr,none": 0.1, "alias": "x", "f1,strict": 0.5,
                                            "flag": True, "na": "N/A"})["f1,strict"], 0.5)
    assert parse_metric_choices(["acc", "gsm8k=exact_match,strict-match", "piqa=acc_norm,none"]) == \
        evals.MetricChoice(("acc",), {"gsm8k": "exact_match,strict-match", "piqa": "acc_norm"})
