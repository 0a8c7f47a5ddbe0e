"""The per-run leaderboard written next to results.json (CSV and Markdown).

One row per model; for each task its headline metric with CI and n. Cross-run
reports with significance live in ``reports.report``.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.store import atomic_write_text

def _fmt(v, floatfmt: str) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return format(v, floatfmt)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def run_leaderboard_frame(results: dict[str, dict[str, dict]]) -> pd.DataFrame:
    rows: dict[str, dict] = {}
    for task, per_model in results.items():
        for model, m in (per_model or {}).items():
            metric = m.get("primary_metric", "score")  # each task declares its headline metric
            r = rows.setdefault(model, {"model": model})
            r[f"{task}/{metric}"] = m.get(metric)
            if m.get(f"{metric}_lower") is not None:
                r[f"{task}/ci"] = f"[{m[f'{metric}_lower']:.3f}, {m[f'{metric}_upper']:.3f}]"
            r[f"{task}/n"] = m.get("n", m.get("n_prompts", m.get("n_total")))
            for col in m.get("leaderboard_columns", []):  # a task's secondary columns (AlpacaEval's LC)
                r[f"{task}/{col}"] = m.get(col)
    df = pd.DataFrame(list(rows.values()))
    for col in [c for c in df.columns if c.endswith("/n")]:
        df[col] = df[col].astype("Int64")  # counts stay integers next to missing cells
    return df


def write_run_leaderboard(run_dir: str | Path, results: dict) -> pd.DataFrame:
    df = run_leaderboard_frame(results)
    atomic_write_text(Path(run_dir) / "leaderboard.csv", df.to_csv(index=False))
    atomic_write_text(Path(run_dir) / "leaderboard.md", markdown_table(df) if not df.empty else "(no results)\n")
    return df
