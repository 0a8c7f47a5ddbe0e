"""The leaderboard as tables to show, shared by report.html and leaderboard.md: the glance table
(one row per model, grouped under base models, one headline column per benchmark), the
per-benchmark detail tables (every other metric, at the official tool's precision) and the banner
naming the results that are not comparable to published leaderboards. Text only; escaping is the
renderer's job.
"""
from __future__ import annotations

from reports import display, labels

# keys of a result that are labels, not metrics
LABEL_KEYS = {"primary_metric", "official_metrics", "lower_is_better", "judge", "judge_model", "judge_api",
              "judge_method", "scorer"}
HARNESS_MEAN = "harness mean [95% CI]"  # of the per-sample scores, percentile bootstrap
VARIANT_SEP = "@"  # "<base>@<variant>": best-of-n (model@bo4[rm]), system-message ablations


def base_model(name: str) -> str:
    return name.split(VARIANT_SEP, 1)[0]


def groups(board: dict) -> list[list[dict]]:
    """Board rows grouped by base model, in the board's order of first appearance; in each group the
    base model first, then its variants in board order."""
    out: dict[str, list[dict]] = {}
    for row in board["rows"]:
        out.setdefault(base_model(row["model"]), []).append(row)
    return [sorted(g, key=lambda r: r["model"] != base_model(r["model"])) for g in out.values()]


def _n_text(ns: list) -> str:
    ns = sorted({int(n) for n in ns if isinstance(n, (int, float)) and not isinstance(n, bool)})
    if not ns:
        return ""
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def columns(board: dict) -> list[dict]:
    """Per benchmark: its headline metric, direction, n and label(s) over the models that have it."""
    out = []
    for task in board["tasks"]:
        cells = [r["cells"][task] for r in board["rows"] if task in r["cells"]]
        metric_names = list(dict.fromkeys(c["metric"] for c in cells if c["metric"]))
        out.append({"task": task, "metric": " / ".join(metric_names),
                    "lower_is_better": any(c["lower_is_better"] for c in cells),
                    "n": _n_text([c["n"] for c in cells]),
                    "labels": list(dict.fromkeys(c["label"] for c in cells))})
    return out


def glance_cell(task: str, c: dict | None) -> dict:
    """{"text", "plus", "minus", "value", "title", "official"} of one headline cell."""
    if not c:
        return {"text": "", "plus": None, "minus": None, "value": None, "title": "not evaluated", "official": False}
    v, plus, minus = display.ci_parts(task, c["value"], c["lower"], c["upper"])
    title = [f"{c['metric']}: {display.number(task, c['metric'] or '', c['value'], detail=True)}"]
    if c["lower"] is not None:
        title.append(f"95% CI {display.interval(task, c['lower'], c['upper'])}"
                     + (f" ({c['ci_method']})" if c.get("ci_method") else ""))
    if c["n"] is not None:
        title.append(f"n={c['n']}")
    if c["value"] is None:
        failed = (c.get("metrics") or {}).get("n_parse_failures")
        title.insert(0, "no value" + (f" ({failed} judge parse failures)" if failed else ""))
    title.append(c["label"])
    return {"text": v, "plus": plus, "minus": minus, "value": c["value"], "title": "; ".join(title),
            "official": c["official"]}


def _is_number(v) -> bool:
    return v is None or isinstance(v, (int, float)) and not isinstance(v, bool)


def detail(board: dict, task: str) -> dict:
    """{"columns": [metric names], "rows": [{"model", "cells": [(text, interval)]}], "notes", "labels"}:
    every numeric metric of the task (its CI beside it), then the harness's mean of the per-sample
    scores; "labels" are the cells' labels ("official" or who graded them), once per table."""
    rows = [r for r in board["rows"] if task in r["cells"]]
    keys: dict[str, None] = {}
    notes: dict[str, None] = {}
    for r in rows:
        m = r["cells"][task].get("metrics") or {}
        for k, v in m.items():
            if k in LABEL_KEYS:
                continue
            if isinstance(v, str):
                notes[f"{k}: {v}"] = None
            elif _is_number(v) and not (k.endswith(("_lower", "_upper")) and k.rsplit("_", 1)[0] in m):
                keys[k] = None
    out_rows = []
    for r in rows:
        c = r["cells"][task]
        m = c.get("metrics") or {}
        cells = []
        for k in keys:
            v = m.get(k)
            ci = display.interval(task, m.get(f"{k}_lower"), m.get(f"{k}_upper"))
            cells.append((display.number(task, k, v) if k in m else "", ci))
        s = c.get("sample")
        if s:
            cells.append((f"{s['mean']:.3f}", f"[{s['lower']:.3f}, {s['upper']:.3f}] n={s['n']}"))
        else:
            cells.append(("", ""))
        out_rows.append({"model": r["model"], "cells": cells})
    graded = list(dict.fromkeys(r["cells"][task]["label"] for r in rows))
    return {"columns": [*keys, HARNESS_MEAN], "rows": out_rows, "notes": list(notes), "labels": graded}


def banner(board: dict) -> list[str]:
    """One line per grader that is not the official one: the benchmarks it graded, and the official
    grader they would need to be comparable to published leaderboards. Empty when all are official."""
    by_label: dict[str, dict[str, None]] = {}
    for row in board["rows"]:
        for task, c in row["cells"].items():
            if not c["official"]:
                by_label.setdefault(c["label"], {})[task] = None
    lines = []
    for label, tasks in by_label.items():
        named = [t for t in tasks if labels.official_grader(t)]
        wanted = [labels.official_grader(t) if len(tasks) == 1 else f"{t} {labels.official_grader(t)}"
                  for t in named]
        lines.append(f"{', '.join(tasks)}: {label}" + (f" (official: {'; '.join(wanted)})" if wanted else ""))
    return lines
