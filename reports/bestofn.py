"""Best-of-n analysis from one candidate pool: reward and oracle score against n, agreement, distribution.

Drawing separate pools for n = 1, 2, 4, ... wastes samples and adds noise. From one pool of N candidates per
prompt, the best-of-k value is estimated without bias as its expectation over all C(N, k) subsets of size k,
computed exactly: rank the candidates by reward (ties: lower sample index first, the rule the reranker
selects by); the candidate at rank r (0 = best) is the pick of a random k-subset exactly when it is in the
subset and the other k-1 members all rank below it, with probability C(N-1-r, k-1) / C(N, k).

- ``reward``: expected reward of the pick (the expected max reward);
- ``score``: expected oracle score (e.g. the judge's) of the reward model's pick;
- ``oracle_best``: expected max oracle score (what a perfect reranker would reach);
- ``agreement``: probability that the pick has the highest oracle score in its subset (ties count as agreement).

Per-prompt expectations are averaged over prompts; the 95% CIs are a percentile bootstrap over prompts
(``reports.stats``). The JSON/CSV written here is what the plotting code draws (columns ``n``,
``reward_mean``, ``score_mean``, each with ``_lower``/``_upper``).
"""
from __future__ import annotations

import csv
import io
import json
import re
from math import comb
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.store import atomic_write_text


def pick_probabilities(pool_size: int, k: int) -> np.ndarray:
    """P(rank r is the best of a uniformly random k-subset), r = 0..N-1 (rank 0 = best)."""
    if not 1 <= k <= pool_size:
        raise ValueError(f"best-of-k: k={k} must be between 1 and the pool size {pool_size}")
    total = comb(pool_size, k)
    return np.array([comb(pool_size - 1 - r, k - 1) / total for r in range(pool_size)])


def _rank_order(rewards: Sequence[float]) -> list[int]:
    return sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))


def expected_pick_value(rewards: Sequence[float], values: Sequence[float], k: int) -> float:
    """E[values of the highest-reward member of a random k-subset]."""
    p = pick_probabilities(len(rewards), k)
    order = _rank_order(rewards)
    return float(sum(p[r] * values[i] for r, i in enumerate(order)))


def expected_max(values: Sequence[float], k: int) -> float:
    return expected_pick_value(values, values, k)


def expected_agreement(rewards: Sequence[float], scores: Sequence[float], k: int) -> float:
    """P(the reward model's pick of a random k-subset has that subset's highest oracle score)."""
    n = len(rewards)
    total = comb(n, k)
    order = _rank_order(rewards)
    prob = 0
    for r, i in enumerate(order):
        # the other k-1 members come from lower ranks, and none may beat the pick's oracle score
        m = sum(1 for j in order[r + 1:] if scores[j] <= scores[i])
        prob += comb(m, k - 1)
    return prob / total


def pool_table(pool, rewards: dict, oracle: dict | None = None) -> dict[str, dict]:
    """instance id -> {"rewards": [...], "scores": [...] | None} in sample order, from a ``harness.rerank.Pool``.

    Candidates without a reward (or, with an oracle, without an oracle score) are left out.
    """
    table = {}
    for iid, by_index in pool.samples.items():
        rs, ss = [], []
        for s in sorted(by_index):
            key = by_index[s].key
            if rewards.get(key) is None or (oracle is not None and oracle.get(key) is None):
                continue
            rs.append(float(rewards[key]))
            ss.append(float(oracle[key]) if oracle is not None else None)
        table[iid] = {"rewards": rs, "scores": ss if oracle is not None else None}
    return table


def _distribution(values: np.ndarray, bins: int = 20) -> dict:
    counts, edges = np.histogram(values, bins=bins)
    q = np.percentile(values, [5, 25, 50, 75, 95])
    return {"count": int(values.size), "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max()),
            "quantiles": {"p5": q[0], "p25": q[1], "p50": q[2], "p75": q[3], "p95": q[4]},
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}


def analyze(table: dict[str, dict], ns: Sequence[int], B: int = 1000, seed: int = 0, meta: dict | None = None) -> dict:
    """The best-of-n curve, agreement and reward distribution. Prompts with fewer than max(ns) scored
    candidates are dropped (and counted); each prompt uses all of its scored candidates as its pool."""
    from reports.stats import bootstrap_mean_cis

    ns = sorted(set(int(n) for n in ns))
    kept = {iid: row for iid, row in sorted(table.items()) if len(row["rewards"]) >= ns[-1]}
    if not kept:
        raise ValueError(f"best-of-n analysis: no prompt has {ns[-1]} scored candidates "
                         f"({len(table)} prompts in the pool)")
    with_scores = all(row["scores"] is not None for row in kept.values())
    metrics = ["reward", "score", "oracle_best", "agreement"] if with_scores else ["reward"]
    cols = []
    for row in kept.values():
        r, s = row["rewards"], row["scores"]
        vals = []
        for n in ns:
            vals.append(expected_max(r, n))
            if with_scores:
                vals += [expected_pick_value(r, s, n), expected_max(s, n), expected_agreement(r, s, n)]
        cols.append(vals)
    cis = bootstrap_mean_cis(np.array(cols), B=B, seed=seed)
    curve = []
    for j, n in enumerate(ns):
        row = {"n": n, "n_prompts": len(kept)}
        for m_i, m in enumerate(metrics):
            ci = cis[j * len(metrics) + m_i]
            row[f"{m}_mean"], row[f"{m}_lower"], row[f"{m}_upper"] = ci["mean"], ci["lower"], ci["upper"]
        curve.append(row)
    rewards = np.array([x for row in kept.values() for x in row["rewards"]])
    by_index = {}
    for row in kept.values():
        for s, x in enumerate(row["rewards"]):
            by_index.setdefault(s, []).append(x)
    out = {"meta": dict(meta or {}), "ns": ns, "n_prompts": len(kept), "dropped_prompts": len(table) - len(kept),
           "pool_sizes": sorted({len(row["rewards"]) for row in kept.values()}),
           "estimator": "exact expectation over all k-subsets of each prompt's pool (order statistics)",
           "bootstrap": {"B": B, "seed": seed, "over": "prompts", "level": 0.95},
           "curve": curve, "reward_distribution": _distribution(rewards),
           "reward_by_sample_position": [{"position": s, "mean": float(np.mean(v)), "count": len(v)}
                                         for s, v in sorted(by_index.items())]}
    if with_scores:
        out["score_distribution"] = _distribution(np.array([x for row in kept.values() for x in row["scores"]]))
    return out


def curve_csv(result: dict) -> str:
    rows = result["curve"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_analysis(result: dict, out_dir: str | Path, stem: str) -> list[Path]:
    """``<stem>.json`` (everything) and ``<stem>.csv`` (the curve, one row per n)."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.csv"]
    atomic_write_text(paths[0], json.dumps(result, indent=2))
    atomic_write_text(paths[1], curve_csv(result))
    return paths


# ----------------------------------------------------------------------------- judged best-of-n models

# ``harness.rerank.virtual_model_name``: "<model>@bo<n>[<label>]"
BO_MODEL = re.compile(r"^(?P<base>.+)@bo(?P<n>\d+)\[(?P<label>.+)\]$")


def series_name(model: str, label: str) -> str:
    """The stem of ``harness rerank``'s analysis files (bestofn/<model>__<label>.*), which is also the
    curve name ``reports.plots.read_best_of_n`` gives their rows: judged points and a curve file of
    the same pool and reward model meet under one name."""
    return f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', model)}__{label}"


def judged_points(board: dict) -> list[dict]:
    """The judge's score of the answers each ``<base>@bo<n>[<label>]`` model selected, per benchmark, with
    the leaderboard's 95% CI: rows {"model" (series), "task", "metric", "n", "score", "score_lower",
    "score_upper"}, sorted by series, task and n."""
    out = []
    for row in board["rows"]:
        m = BO_MODEL.match(row["model"])
        if not m:
            continue
        for task, cell in row["cells"].items():
            if cell.get("value") is None:
                continue
            point = {"model": series_name(m["base"], m["label"]), "task": task, "metric": cell.get("metric"),
                     "n": int(m["n"]), "score": float(cell["value"])}
            if cell.get("lower") is not None and cell.get("upper") is not None:
                point.update(score_lower=float(cell["lower"]), score_upper=float(cell["upper"]))
            out.append(point)
    return sorted(out, key=lambda p: (p["model"], p["task"], p["n"]))
