"""Paired significance report: which differences between models are real.

Per benchmark, each comparison uses only the instances both models have a score for
(the per-sample ``score``; several samples of one instance are averaged first). The
comparisons are every model against one baseline, or all pairs. Holm's correction runs
across ALL comparisons of the report (every benchmark together), separately for each test.
A difference is called significant when the Holm-adjusted paired-bootstrap p-value is
below alpha.
"""
from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from reports import stats

# p-value columns that get a Holm-adjusted twin ("<name>_holm")
P_COLUMNS = ("p_bootstrap", "p_t", "p_wilcoxon", "p_sign", "p_permutation", "p_mcnemar")


def score_table(rows: list[dict]) -> dict[str, dict[str, float]]:
    """model -> instance_id -> score (mean over sample indices; rows with score None skipped)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        s = r.get("score")
        if s is None:
            continue
        s = float(s)
        if math.isfinite(s):
            acc[r["model"]][str(r["instance_id"])].append(s)
    # plain sum/len: np.mean per instance would dominate the report's run time
    return {m: {i: (v[0] if len(v) == 1 else sum(v) / len(v)) for i, v in per.items()} for m, per in acc.items()}


def comparison_pairs(models: list[str], baseline: str | None, pairs: str) -> list[tuple[str, str]]:
    """(model, reference) pairs: every model vs the baseline, or all unordered pairs."""
    if pairs == "all":
        return list(itertools.combinations(sorted(models), 2))
    if pairs != "baseline":
        raise ValueError(f"pairs must be 'baseline' or 'all', got {pairs!r}")
    return [(m, baseline) for m in sorted(models) if m != baseline]


def choose_baseline(tables: dict[str, dict], baseline: str | None) -> str:
    models = sorted({m for t in tables.values() for m in t})
    if not models:
        raise ValueError("no per-sample scores found: nothing to compare (samples/<task>.jsonl rows need 'score')")
    if baseline is None:
        return models[0]
    if baseline not in models:
        raise ValueError(f"baseline model {baseline!r} has no scored samples; models present: {', '.join(models)}")
    return baseline


def compare(samples_by_task: dict[str, list[dict]], baseline: str | None = None, pairs: str = "baseline",
            B: int = stats.DEFAULT_B, seed: int = 0, alpha: float = stats.ALPHA,
            zero_method: str = "wilcox", ties_mode: str = "exclude") -> dict:
    """Run all comparisons; returns {"settings", "comparisons": [flat dict per comparison]}."""
    if pairs not in ("baseline", "all"):
        raise ValueError(f"pairs must be 'baseline' or 'all', got {pairs!r}")
    tables = {task: score_table(rows) for task, rows in samples_by_task.items()}
    notes = []
    chosen = None
    if pairs == "baseline":
        chosen = choose_baseline(tables, baseline)
        if baseline is None:
            notes.append(f"baseline {chosen!r} chosen as the first model by name (pass --baseline to choose)")
    rows, pending = [], []  # pending: (row, a, b) waiting for the tests
    for task in samples_by_task:
        table = tables[task]
        if pairs == "baseline" and chosen not in table:
            notes.append(f"{task}: baseline {chosen!r} has no scored samples; no comparisons")
            continue
        for a_name, b_name in comparison_pairs(list(table), chosen, pairs):
            shared = sorted(set(table[a_name]) & set(table[b_name]))
            row = {"task": task, "model": a_name, "reference": b_name, "n": len(shared)}
            rows.append(row)
            if len(shared) < 2:
                row["note"] = "fewer than 2 shared scored instances"
                continue
            a = np.array([table[a_name][i] for i in shared])
            b = np.array([table[b_name][i] for i in shared])
            pending.append((row, a, b))
    # resampling tests for all comparisons with the same n run as one matrix product each
    by_n: dict[int, list[int]] = defaultdict(list)
    for k, (_, a, _b) in enumerate(pending):
        by_n[a.size].append(k)
    boot, perm = {}, {}
    for n, ks in by_n.items():
        diffs = np.stack([pending[k][1] - pending[k][2] for k in ks], axis=1)
        boot.update(zip(ks, stats.paired_bootstrap_columns(diffs, B, seed)))
        perm.update(zip(ks, stats.permutation_test_columns(diffs, B, seed)))
    for k, (row, a, b) in enumerate(pending):
        res = stats.compare_paired(a, b, B=B, seed=seed, zero_method=zero_method, ties_mode=ties_mode,
                                   bootstrap=boot[k], permutation=perm[k])
        row.update({
            "mean_model": res["mean_a"], "mean_reference": res["mean_b"],
            "diff": res["bootstrap"]["diff"], "ci_lower": res["bootstrap"]["lower"],
            "ci_upper": res["bootstrap"]["upper"], "p_bootstrap": res["bootstrap"]["p_value"],
            "t": res["paired_t"]["t"], "p_t": res["paired_t"]["p_value"],
            "wilcoxon_statistic": res["wilcoxon"]["statistic"], "p_wilcoxon": res["wilcoxon"]["p_value"],
            "wins": res["sign_test"]["wins"], "losses": res["sign_test"]["losses"],
            "ties": res["sign_test"]["ties"], "p_sign": res["sign_test"]["p_value"],
            "p_permutation": res["permutation"]["p_value"],
            "p_mcnemar": res["mcnemar"]["p_value"] if "mcnemar" in res else None,
            "cohens_dz": res["effect"]["cohens_dz"], "rank_biserial": res["effect"]["rank_biserial"],
            "mdd": res["mdd"],
        })
    for col in P_COLUMNS:
        p = np.array([r.get(col) if r.get(col) is not None else np.nan for r in rows], dtype=float)
        adjusted = stats.holm(p)
        for r, q in zip(rows, adjusted):
            r[col + "_holm"] = None if not np.isfinite(q) else float(q)
    for r in rows:
        q = r.get("p_bootstrap_holm")
        r["significant"] = bool(q is not None and q < alpha)
    settings = {
        "pairs": pairs, "baseline": chosen, "bootstrap_rounds": B, "seed": seed, "alpha": alpha,
        "ci": "95% percentile paired bootstrap over shared instances",
        "resampling_unit": "instance (question): clustered by question, unlike Arena-Hard v0.1's official "
                           "bootstrap over battle rows; the official CIs are in the leaderboard, labelled official",
        "p_bootstrap": "two-sided: 2*min(P*(diff<=0), P*(diff>=0)), (count+1)/(B+1)",
        "wilcoxon_zero_method": zero_method, "sign_test_ties": ties_mode,
        "mcnemar": "only when both models' scores are 0/1; exact when discordant < 25",
        "permutation": "paired (within-instance swap), same resample count and seed as the bootstrap",
        "multiple_comparisons": "Holm (statsmodels method='holm') across all comparisons in this report, per test",
        "significant": f"p_bootstrap_holm < {alpha}",
        "mdd": "minimum detectable difference, two-sided paired t, alpha 0.05, power 0.8, at the shared n",
        "effect_sizes": "mean difference (model - reference), Cohen's d_z, matched-pairs rank-biserial",
    }
    return {"settings": settings, "notes": notes, "comparisons": rows}


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def fmt_p(p) -> str:
    if p is None:
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def to_markdown(result: dict) -> str:
    s = result["settings"]
    lines = ["# Significance report", ""]
    if s["pairs"] == "baseline":
        lines.append(f"Every model against the baseline **{s['baseline']}**, paired over shared instances.")
    else:
        lines.append("All pairs of models, paired over shared instances.")
    lines += ["", "Settings:", ""] + [f"- {k}: {v}" for k, v in s.items()] + [""]
    for note in result["notes"]:
        lines.append(f"> note: {note}")
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in result["comparisons"]:
        by_task[r["task"]].append(r)
    header = ("| model | reference | n | diff | 95% CI | p boot (Holm) | p t | p Wilcoxon | W/L/T | p sign "
              "| p perm | p McNemar | d_z | r_rb | MDD | sig. |")
    for task, rows in by_task.items():
        lines += ["", f"## {task}", "", header, "|" + "---|" * 16]
        for r in rows:
            if "diff" not in r:
                lines.append(f"| {r['model']} | {r['reference']} | {r['n']} | — | — | — | — | — | — | — | — | — "
                             f"| — | — | — | {r.get('note', '')} |")
                continue
            lines.append(
                f"| {r['model']} | {r['reference']} | {r['n']} | {fmt_num(r['diff'])} | "
                f"[{fmt_num(r['ci_lower'])}, {fmt_num(r['ci_upper'])}] | "
                f"{fmt_p(r['p_bootstrap'])} ({fmt_p(r['p_bootstrap_holm'])}) | {fmt_p(r['p_t'])} | "
                f"{fmt_p(r['p_wilcoxon'])} | {r['wins']}/{r['losses']}/{r['ties']} | {fmt_p(r['p_sign'])} | "
                f"{fmt_p(r['p_permutation'])} | {fmt_p(r['p_mcnemar'])} | {fmt_num(r['cohens_dz'])} | "
                f"{fmt_num(r['rank_biserial'])} | {fmt_num(r['mdd'])} | {'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pj, pm = out_dir / "significance.json", out_dir / "significance.md"
    pj.write_text(json.dumps(_json_safe(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    pm.write_text(to_markdown(result), encoding="utf-8")
    return pj, pm
