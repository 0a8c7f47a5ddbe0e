"""Arena-Hard v0.1 leaderboard speed: the official per-round sklearn fits vs the harness's batched Newton.

The slow path re-implements the official v0.1 semantics the slow way (as show_result.py does it): for
the point estimate and for each bootstrap round, ``DataFrame.sample(frac=1, replace=True)`` on the
battle rows from one RandomState(42), the duplicated-row design (+ln10 / -ln10, ties split across the
two copies) and an unregularised sklearn ``LogisticRegression(fit_intercept=False, tol=1e-8)``.
The fast path is ``reports.arena_hard_metrics.leaderboard``. Both outputs must agree to 2 decimals.

Usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/arena_hard_speed.py [--models 60] [--rounds 100]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports import arena_hard_metrics as AH  # noqa: E402

BASELINE = "gpt-4-0314"


def synthetic_judgments(n_models: int, n_questions: int = 500, seed: int = 7) -> list[dict]:
    """v0.1 judgment lines for n_models - 1 models (plus the implicit baseline), strengths spread widely."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_models - 1):
        p_win = 0.04 + 0.9 * m / max(n_models - 2, 1)  # model's chance of beating the baseline
        for q in range(n_questions):
            games = []
            for g in range(2):
                u = rng.random()
                if u < 0.005:
                    games.append({"score": None})
                    continue
                tie = rng.random() < 0.12
                strong = rng.random() < 0.35
                model_wins = rng.random() < p_win
                if tie:
                    s = "A=B"
                elif (model_wins and g == 0) or (not model_wins and g == 1):
                    s = "B>>A" if strong else "B>A"
                else:
                    s = "A>>B" if strong else "A>B"
                games.append({"score": s})
            rows.append({"question_id": f"q{q:04d}", "model": f"model-{m:02d}", "games": games})
    return rows


def official_mle_elo(df: pd.DataFrame, baseline: str = BASELINE) -> pd.Series:
    """compute_mle_elo (v0.1) semantics with sklearn: duplicated rows, ties half in each copy."""
    from sklearn.linear_model import LogisticRegression

    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    n, p = len(df), len(models)
    X = np.zeros([n, p])
    X[np.arange(n), models[df["model_a"]].to_numpy()] = +math.log(10)
    X[np.arange(n), models[df["model_b"]].to_numpy()] = -math.log(10)
    Y = np.zeros(n)
    Y[(df["winner"] == "model_a").to_numpy()] = 1.0
    tie = ((df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")).to_numpy().copy()
    tie[len(tie) // 2:] = False
    Y[tie] = 1.0
    # penalty=None spelled C=inf (sklearn >= 1.8 deprecates penalty=); lbfgs, max_iter 100 as upstream
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8)
    lr.fit(X, Y)
    elo = 400 * lr.coef_[0] + 1000
    if baseline in models.index:
        elo += 1000 - elo[models[baseline]]
    return pd.Series(elo, index=models.index).sort_values(ascending=False)


def official_leaderboard(battles: pd.DataFrame, rounds: int) -> pd.DataFrame:
    point = official_mle_elo(battles)
    rs = np.random.RandomState(42)  # np.random.seed(42) at utils_math import
    boot = pd.DataFrame([official_mle_elo(battles.sample(frac=1.0, replace=True, random_state=rs))
                         for _ in range(rounds)])
    rows = []
    for m in point.index:
        rows.append({"model": m, "score": AH.win_rate_vs(point[m], point[BASELINE]),
                     "lower": AH.win_rate_vs(np.percentile(boot[m], 2.5), np.percentile(boot[BASELINE], 2.5)),
                     "upper": AH.win_rate_vs(np.percentile(boot[m], 97.5), np.percentile(boot[BASELINE], 97.5))})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the fast path (median reported)")
    args = ap.parse_args()

    rows = synthetic_judgments(args.models)
    battles = AH.battles_from_judgments(rows)
    print(f"{args.models} models, {len(battles)} battle rows, {args.rounds} bootstrap rounds")

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = AH.leaderboard(battles, num_rounds=args.rounds)
        times.append(time.perf_counter() - t0)
    t_fast = float(np.median(times))
    print(f"harness (batched Newton): {t_fast:.3f} s (median of {args.repeats}: "
          f"{', '.join(f'{t:.3f}' for t in times)})")

    t0 = time.perf_counter()
    slow = official_leaderboard(battles, args.rounds)
    t_slow = time.perf_counter() - t0
    print(f"official semantics (sklearn per round): {t_slow:.1f} s")

    merged = fast.merge(slow, on="model", suffixes=("_fast", "_official"))
    diffs = {c: float((merged[f"{c}_fast"] - merged[f"{c}_official"]).abs().max()) for c in ("score", "lower", "upper")}
    cells = int(sum(((merged[f"{c}_fast"] - merged[f"{c}_official"]).abs() > 0.005).sum()
                    for c in ("score", "lower", "upper")))
    print(f"max |diff| per column: {diffs}; cells differing at 2 dp: {cells} of {3 * len(merged)}")
    print(f"speed-up: {t_slow / t_fast:.0f}x")
    if cells:
        sys.exit(1)


if __name__ == "__main__":
    main()
