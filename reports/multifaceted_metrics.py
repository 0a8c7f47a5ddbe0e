"""Multifaceted Bench metrics: mean rubric score with bootstrap CIs, and pairwise tie+win.

Scores follow JANUS ``run_eval_openai.py``: an instance's score is the mean of its rubric
scores (1-5), a model's score is the mean over instances, and N judge runs are averaged
(here: per rubric, before the rubric mean). A judge call whose score could not be parsed
is left out of its mean and counted in ``n_failed`` (JANUS would stop on it).

CIs are percentile bootstraps over instances (seeded numpy ``default_rng``). Pairwise
comparisons use the instances both models have a score for; a "win" is a strictly higher
instance score, a tie an equal one, and the tie+win rate is (wins + ties) / n, the
paper's headline comparison. ``unit="rubric"`` compares per (instance, rubric) instead.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from statistics import fmean

import numpy as np

_CRITERION = re.compile(r"^rubric(\d+)/run(\d+)$")


@dataclass(frozen=True)
class RubricScore:
    model: str
    instance_id: str
    source: str
    rubric_index: int
    run: int
    value: float | None  # None: the judge's score could not be parsed


def rows_from_judgments(judgments, instances) -> list[RubricScore]:
    """Judgment records of the rubric judge -> RubricScore rows (source from the instance)."""
    source = {i.id: i.source for i in instances}
    rows = []
    for j in judgments:
        m = _CRITERION.match(j.criterion or "")
        if not m:
            continue
        ok = j.parse_status == "ok" and j.value is not None
        rows.append(RubricScore(j.model, j.instance_id, source.get(j.instance_id, ""), int(m.group(1)),
                                int(m.group(2)), float(j.value) if ok else None))
    return rows


def rubric_means(rows: list[RubricScore]) -> dict[tuple[str, str, int], float]:
    """(model, instance, rubric) -> mean over the runs that parsed."""
    runs: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        runs.setdefault((r.model, r.instance_id, r.rubric_index), [])
        if r.value is not None:
            runs[(r.model, r.instance_id, r.rubric_index)].append(r.value)
    return {k: fmean(v) for k, v in runs.items() if v}


def instance_scores(rows: list[RubricScore]) -> dict[str, dict[str, float]]:
    """model -> instance -> mean over rubrics (of run means)."""
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (model, inst, _), v in rubric_means(rows).items():
        per[model][inst].append(v)
    return {m: {i: fmean(v) for i, v in insts.items()} for m, insts in per.items()}


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean. One value (or none) gives (mean, mean)."""
    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    if len(x) == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _mean_ci(out: dict, name: str, values: list[float], n_boot: int, seed: int) -> None:
    if not values:
        return
    out[name] = fmean(values)
    out[f"{name}_lower"], out[f"{name}_upper"] = bootstrap_ci(values, n_boot, seed)


def summarize(rows: list[RubricScore], n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """model -> flat metrics: score (+CI), n, n_failed, source.<name> (+CI), dim<i> (+CI)."""
    inst = instance_scores(rows)
    per_rubric = rubric_means(rows)
    source_of = {(r.model, r.instance_id): r.source for r in rows}
    failed: dict[str, int] = defaultdict(int)
    for r in rows:
        failed[r.model] += r.value is None
    out: dict[str, dict] = {}
    for model in sorted({r.model for r in rows}):
        scores = inst.get(model, {})
        metrics: dict = {"n": len(scores), "n_failed": failed[model]}
        _mean_ci(metrics, "score", [scores[i] for i in sorted(scores)], n_boot, seed)
        by_source: dict[str, list[float]] = defaultdict(list)
        for i in sorted(scores):
            by_source[source_of[(model, i)]].append(scores[i])
        for src in sorted(by_source):
            _mean_ci(metrics, f"source.{src}", by_source[src], n_boot, seed)
        by_dim: dict[int, list[float]] = defaultdict(list)
        for (m, i, d), v in sorted(per_rubric.items()):
            if m == model:
                by_dim[d].append(v)
        for d in sorted(by_dim):
            _mean_ci(metrics, f"dim{d}", by_dim[d], n_boot, seed)
        out[model] = metrics
    return out


def pairwise(rows: list[RubricScore], model_a: str, model_b: str, unit: str = "instance",
             n_boot: int = 1000, seed: int = 0) -> dict:
    """Win/tie/loss of ``model_a`` against ``model_b`` on the units both have a score for."""
    if unit == "instance":
        scores = instance_scores(rows)
        a, b = scores.get(model_a, {}), scores.get(model_b, {})
    elif unit == "rubric":
        per = rubric_means(rows)
        a = {(i, d): v for (m, i, d), v in per.items() if m == model_a}
        b = {(i, d): v for (m, i, d), v in per.items() if m == model_b}
    else:
        raise ValueError(f"pairwise: unit must be 'instance' or 'rubric', got {unit!r}")
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"pairwise: models {model_a!r} and {model_b!r} have no scored {unit}s in common")
    outcome = np.array([np.sign(a[k] - b[k]) for k in common])  # 1 win, 0 tie, -1 loss
    n = len(common)
    wins, ties, losses = int((outcome > 0).sum()), int((outcome == 0).sum()), int((outcome < 0).sum())
    lo, hi = bootstrap_ci((outcome >= 0).astype(float), n_boot, seed)
    return {"model": model_a, "opponent": model_b, "unit": unit, "n": n, "wins": wins, "ties": ties,
            "losses": losses, "win_rate": wins / n, "tie_rate": ties / n, "loss_rate": losses / n,
            "tie_win_rate": (wins + ties) / n, "tie_win_rate_lower": lo, "tie_win_rate_upper": hi}
