"""Merge run directories into one leaderboard: a row per model, a column group per benchmark.

Reads, per run directory, ``results.json`` = {"run": {...}, "results": {task: {model: metrics}}}
and ``samples/<task>.jsonl`` (rows with at least task, instance_id, model, score).

Metric convention inside ``results[task][model]`` (what tasks write):
* ``primary_metric``: name of the headline metric (optional; default: the first numeric key
  that is not ``n`` and does not end in ``_lower``/``_upper``/``_se``).
* ``<metric>_lower`` / ``<metric>_upper``: its confidence interval, when the task computed one
  (e.g. Arena-Hard's official bootstrap percentiles).
* ``n``: number of instances behind the number.
* ``official_metrics``: list of metric names computed the official way; marked "official" only
  when the recorded grader is the official one (``reports.labels``).
* ``judge``, ``judge_model``, ``judge_method`` / ``scorer``: who graded the result (the pipeline
  records them); a result without them is labelled "judge not recorded", never "official".
* ``<metric>_se`` (AlpacaEval: ``standard_error`` of ``win_rate``): a CI of ±1.96 SE when the task
  gives no interval.
* ``lower_is_better``: true for metrics where smaller is better (toxicity); used for sorting.

Next to the task's own number, every cell carries the harness's CI: the mean of the
per-sample ``score`` with a percentile bootstrap CI (seeded), computed from the samples so
it can be traced to them. When a (task, model) pair appears in several runs, the later run
directory on the command line wins and a note says so.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.jsonl import read_jsonl
from reports import display, labels, stats
from reports.significance import score_table

REQUIRED_SAMPLE_FIELDS = ("task", "instance_id", "model", "score")
CI_SUFFIXES = ("_lower", "_upper", "_se", "_ci")


@dataclass
class RunData:
    path: Path
    run: dict
    results: dict  # task -> model -> metrics
    samples: dict  # task -> list of rows


@dataclass
class Merged:
    runs: list[RunData]
    results: dict = field(default_factory=dict)  # task -> model -> metrics
    samples: dict = field(default_factory=dict)  # task -> list of rows
    source: dict = field(default_factory=dict)  # (task, model) -> run dir
    notes: list = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        # the order the runs list them in (their configs' task order), first run first
        return list(dict.fromkeys([*self.results, *self.samples]))

    @property
    def models(self) -> list[str]:
        names = {m for per in self.results.values() for m in per}
        names |= {r["model"] for rows in self.samples.values() for r in rows}
        return sorted(names)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_samples(path: Path) -> list[dict]:
    """Rows of one samples/<task>.jsonl; a bad line is an error naming the file, line and field."""
    rows = read_jsonl(path, tuple(REQUIRED_SAMPLE_FIELDS))
    for n, row in enumerate(rows, 1):
        s = row["score"]
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))):
            raise ValueError(f"{path}: record {n}: field 'score' must be a number or null, got {s!r}")
    return rows


def load_run(run_dir) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: run directory does not exist")
    res_path = run_dir / "results.json"
    results, run = {}, {"name": run_dir.name}
    if res_path.exists():
        doc = _read_json(res_path)
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
            raise ValueError(f"{res_path}: missing field 'results' (expected {{task: {{model: metrics}}}})")
        for task, per in doc["results"].items():
            if not isinstance(per, dict) or not all(isinstance(m, dict) for m in per.values()):
                raise ValueError(f"{res_path}: field 'results.{task}' must map model -> metrics dict")
            for model, metrics in per.items():
                name = metrics.get("primary_metric")
                if name is not None and name not in metrics:
                    raise ValueError(f"{res_path}: field 'results.{task}.{model}.primary_metric' names "
                                     f"{name!r}, which is not among its metrics")
                off = metrics.get("official_metrics", [])
                if not isinstance(off, list):
                    raise ValueError(f"{res_path}: field 'results.{task}.{model}.official_metrics' must be a list")
        results = doc["results"]
        run = {**run, **(doc.get("run") or {})}
    samples = {}
    sdir = run_dir / "samples"
    if sdir.is_dir():
        for p in sorted(sdir.glob("*.jsonl")):
            samples[p.stem] = read_samples(p)
    if not results and not samples:
        raise ValueError(f"{run_dir}: neither results.json nor samples/*.jsonl found")
    return RunData(run_dir, run, results, samples)


def merge_runs(run_dirs) -> Merged:
    merged = Merged(runs=[load_run(d) for d in run_dirs])
    for rd in merged.runs:
        for task, per in rd.results.items():
            for model, metrics in per.items():
                key = (task, model)
                if key in merged.source:
                    merged.notes.append(f"{task}/{model}: {rd.path} replaces {merged.source[key]}")
                merged.results.setdefault(task, {})[model] = metrics
                merged.source[key] = str(rd.path)
        for task, rows in rd.samples.items():
            models_here = {r["model"] for r in rows}
            for m in sorted(models_here & {r["model"] for r in merged.samples.get(task, [])}):
                merged.notes.append(f"{task}/{m}: samples from {rd.path} replace earlier ones")
            kept = [r for r in merged.samples.get(task, []) if r["model"] not in models_here]
            merged.samples[task] = kept + rows
            for m in models_here:
                merged.source.setdefault((task, m), str(rd.path))
    return merged


def primary_metric(metrics: dict) -> str | None:
    name = metrics.get("primary_metric")
    if name:
        if name not in metrics:
            raise ValueError(f"primary_metric {name!r} is not among the metrics {sorted(metrics)}")
        return name
    for k, v in metrics.items():
        if k == "n" or k.endswith(CI_SUFFIXES) or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            return k
    return None


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def sample_cis(table: dict[str, dict[str, float]], B: int, seed: int) -> dict[str, dict]:
    """model -> bootstrap CI of its mean per-sample score; models with the same number of
    scored instances share one matrix product."""
    by_n = {}
    for model, per in table.items():
        if per:
            by_n.setdefault(len(per), []).append(model)
    out = {}
    for models in by_n.values():
        x = np.array([list(table[m].values()) for m in models]).T
        out.update(zip(models, stats.bootstrap_mean_cis(x, B=B, seed=seed)))
    return out


# metric -> the key of its standard error, where a task names it differently from "<metric>_se"
# (AlpacaEval's standard_error is the win rate's; its lc_standard_error is no CI of LC, so not here)
SE_KEYS = {"win_rate": "standard_error"}
# how tasks name the number of instances behind a result (AlpacaEval n_total, RealToxicityPrompts n_prompts)
N_KEYS = ("n", "n_total", "n_prompts")


def _task_ci(cell: dict, metrics: dict, name: str | None) -> None:
    """The headline's 95% CI from the task's own numbers: its interval, else ±1.96 standard errors."""
    if name is None or cell["value"] is None:
        return
    lo, hi = _num(metrics.get(f"{name}_lower")), _num(metrics.get(f"{name}_upper"))
    if lo is not None and hi is not None:
        cell.update(lower=lo, upper=hi, ci_source="task")
        method = metrics.get(f"{name}_ci_method", metrics.get("ci_method"))
        if method:
            cell["ci_method"] = str(method)
        return
    se = _num(metrics.get(f"{name}_se", metrics.get(SE_KEYS.get(name, ""))))
    if se is not None and math.isfinite(se):
        cell.update(lower=cell["value"] - 1.96 * se, upper=cell["value"] + 1.96 * se, ci_source="task",
                    ci_method="normal approximation: ±1.96 × the task's standard error")


def build(merged: Merged, B: int = stats.DEFAULT_B, seed: int = 0) -> dict:
    """The leaderboard as data: {"tasks", "rows": [{"model", "cells": {task: cell}}], "notes"}."""
    tables = {t: score_table(rows) for t, rows in merged.samples.items()}
    cis = {t: sample_cis(table, B, seed) for t, table in tables.items()}
    rows = []
    for model in merged.models:
        cells = {}
        for task in merged.tasks:
            metrics = merged.results.get(task, {}).get(model)
            per_inst = tables.get(task, {}).get(model)
            if metrics is None and not per_inst:
                continue
            cell = {"metric": None, "value": None, "lower": None, "upper": None, "ci_source": None,
                    "n": None, "official": False, "official_metrics": {}, "lower_is_better": False,
                    "graded_by": {}, "label": "judge not recorded", "metrics": {},
                    "source_run": merged.source.get((task, model))}
            name = None
            if metrics:
                name = primary_metric(metrics)
                g = labels.grader(metrics)
                # official = the official computation (the task says so) on the official judge's outputs
                official = list(metrics.get("official_metrics") or []) if labels.is_official_grader(task, g) else []
                cell.update(metric=name, value=_num(metrics.get(name)) if name else None,
                            n=next((metrics[k] for k in N_KEYS if _num(metrics.get(k)) is not None), None),
                            official=name in official, graded_by=g,
                            label=labels.label(task, name, official, g),
                            official_metrics={k: metrics.get(k) for k in official if k in metrics},
                            lower_is_better=bool(metrics.get("lower_is_better", False)), metrics=dict(metrics))
                _task_ci(cell, metrics, name)
            if per_inst:
                ci = cis[task][model]
                cell["sample"] = {"mean": ci["mean"], "lower": ci["lower"], "upper": ci["upper"], "n": ci["n"]}
                if name is None:  # the task names no headline number: the sample mean is the score
                    cell.update(metric="score (mean of samples)", value=ci["mean"], lower=ci["lower"],
                                upper=ci["upper"], ci_source="bootstrap", n=ci["n"])
                elif cell["lower"] is None and cell["value"] is not None and math.isclose(
                        cell["value"], ci["mean"], rel_tol=1e-9, abs_tol=1e-12):
                    # the headline is the mean of the samples: their bootstrap CI is its CI
                    cell.update(lower=ci["lower"], upper=ci["upper"], ci_source="bootstrap",
                                ci_method="harness: percentile bootstrap over the per-sample scores")
                if cell["n"] is None:
                    cell["n"] = ci["n"]
            cells[task] = cell
        rows.append({"model": model, "cells": cells})

    def sort_key(row):
        for task in merged.tasks:
            c = row["cells"].get(task)
            if c and c["value"] is not None:
                return (0, -c["value"] if not c["lower_is_better"] else c["value"], row["model"])
        return (1, 0, row["model"])

    first = merged.tasks[0] if merged.tasks else None
    rows.sort(key=lambda r: sort_key(r) if first else r["model"])
    return {"tasks": merged.tasks, "rows": rows, "notes": list(merged.notes),
            "runs": [{"path": str(r.path), **r.run} for r in merged.runs],
            "bootstrap": {"B": B, "seed": seed, "level": 0.95}}


# ----------------------------------------------------------------------------- formatting

CSV_FIELDS = ("metric", "value", "lower", "upper", "ci_source", "n", "official", "label", "official_metrics",
              "sample_mean", "sample_lower", "sample_upper", "sample_n")


def to_csv(board: dict) -> str:
    header = ["model"] + [f"{t}:{f}" for t in board["tasks"] for f in CSV_FIELDS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in board["rows"]:
        out = [row["model"]]
        for t in board["tasks"]:
            c = row["cells"].get(t)
            if not c:
                out += [""] * len(CSV_FIELDS)
                continue
            s = c.get("sample") or {}
            out += [c["metric"] or "", "" if c["value"] is None else repr(c["value"]),
                    "" if c["lower"] is None else repr(c["lower"]), "" if c["upper"] is None else repr(c["upper"]),
                    c["ci_source"] or "", "" if c["n"] is None else c["n"], "yes" if c["official"] else "no", c["label"],
                    json.dumps(c["official_metrics"]) if c["official_metrics"] else "",
                    "" if not s else repr(s["mean"]), "" if not s else repr(s["lower"]),
                    "" if not s else repr(s["upper"]), "" if not s else s["n"]]
        w.writerow(out)
    return buf.getvalue()


def _md(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def to_markdown(board: dict) -> str:
    """The glance table (headline ±95% CI per benchmark), the label rule, then one detail table per
    benchmark at the official tool's precision."""
    from reports import views

    cols = views.columns(board)
    lines = ["# Leaderboard", ""]
    warn = views.banner(board)
    if warn:
        lines += ["**Not comparable to published leaderboards:**", ""] + [f"- {_md(x)}" for x in warn] + [""]
    lines += [labels.RULE, "",
              "Per benchmark: its primary metric with a 95% CI (the task's own interval, or ±1.96 standard "
              "errors, or the harness's percentile bootstrap over the per-sample scores, "
              f"B={board['bootstrap']['B']}, seed {board['bootstrap']['seed']}).", ""]
    head = ["model"] + [f"{c['task']}: {c['metric']} ({'lower' if c['lower_is_better'] else 'higher'} is better"
                        f"{', ' + c['n'] if c['n'] else ''}; {' / '.join(c['labels'])})" for c in cols]
    lines += ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
    for group in views.groups(board):
        for row in group:
            out = [row["model"]]
            for c in cols:
                cell = row["cells"].get(c["task"])
                out.append(display.short(c["task"], cell["value"], cell["lower"], cell["upper"]) if cell else "")
            lines.append("| " + " | ".join(_md(x) for x in out) + " |")
    for task in board["tasks"]:
        d = views.detail(board, task)
        if not d["rows"]:
            continue
        lines += ["", f"## {task}", "", _md("; ".join(d["labels"])), "", "| model | " + " | ".join(_md(c) for c in d["columns"]) + " |",
                  "|" + "---|" * (len(d["columns"]) + 1)]
        for r in d["rows"]:
            vals = [f"{v} {ci}".strip() for v, ci in r["cells"]]
            lines.append("| " + " | ".join(_md(x) for x in [r["model"], *vals]) + " |")
        lines += [""] + [f"- {_md(n)}" for n in d["notes"]] if d["notes"] else []
    for note in board["notes"]:
        lines.append(f"\n> note: {note}")
    return "\n".join(lines) + "\n"


def write(board: dict, out_dir) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "leaderboard.csv", "md": out_dir / "leaderboard.md", "json": out_dir / "leaderboard.json"}
    paths["csv"].write_text(to_csv(board), encoding="utf-8")
    paths["md"].write_text(to_markdown(board), encoding="utf-8")
    from reports.significance import _json_safe

    paths["json"].write_text(json.dumps(_json_safe(board), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
