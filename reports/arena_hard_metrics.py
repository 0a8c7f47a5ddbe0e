"""Arena-Hard-Auto v0.1 scoring (lm-sys/arena-hard-auto @ efc012e, ``show_result.py``), vectorised.

Pure functions on numpy/pandas; file reading is in ``tasks/arena_hard.py``.

Official semantics reproduced here:
* judgments -> battles: game 1 has A = baseline, game 2 swaps positions; strong verdicts (``>>``) are
  ``weight`` (3) identical rows, ties one row; a game with any other score is dropped alone;
  every row is ``model_a = baseline``, ``model_b = model``;
* Bradley-Terry by unregularised logistic regression on the duplicated-row design (a tie counts as
  half a win), elo = 400 * coef + 1000, anchored so that the baseline is 1000;
* bootstrap: ``num_rounds`` resamples of the battle rows with replacement, drawn from one
  ``numpy.random.RandomState(42)`` (``pandas.DataFrame.sample`` on the global state seeded at import),
  percentiles 2.5 / 97.5 of each model's elo (linear interpolation), all mapped to a win rate against
  the baseline and rounded to 2 decimals; the score is the full-data estimate.

Instead of one sklearn fit per round, the rows are reduced to (pair, outcome) types, each round to a
count vector, and all rounds are solved at once by a batched Newton method on the same likelihood.

``clustered_bootstrap`` (resampling questions, not rows) is the harness's own addition and is
labelled so; it is not the official number.

Known official bug, fixed here: ``get_bootstrap_result`` never passes ``baseline_model``, so the
official bootstrap always anchors on ``gpt-4-0314``; here every fit anchors on the given baseline.
For the default baseline both are the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

SCALE, BASE, INIT_RATING = 400.0, 10.0, 1000.0
OUTCOMES = ("model_a", "model_b", "tie")  # winner column values
# (game index, verdict) -> (winner, strong)
_GAME1 = {"A>>B": ("model_a", True), "A>B": ("model_a", False), "A=B": ("tie", False),
          "B>A": ("model_b", False), "B>>A": ("model_b", True)}
_GAME2 = {"A>>B": ("model_b", True), "A>B": ("model_b", False), "A=B": ("tie", False),
          "B>A": ("model_a", False), "B>>A": ("model_a", True)}


def game_outcome(game_index: int, score) -> tuple[str | None, bool]:
    """(winner, strong) of one game (0-based index); (None, False) when the verdict is not one of the
    five labels, which drops the game."""
    table = _GAME1 if game_index == 0 else _GAME2
    if not isinstance(score, str) or score not in table:
        return None, False
    winner, strong = table[score]
    return winner, strong


def battles_from_judgments(rows: Iterable[dict], baseline: str = "gpt-4-0314", weight: int = 3,
                           first_game_only: bool = False) -> pd.DataFrame:
    """Expanded battle rows (question_id, model_a, model_b, winner) in input order.

    ``rows`` are v0.1 judgment lines: ``{"question_id", "model", "games": [g1, g2]}`` with ``g["score"]``.
    """
    qids, models, winners = [], [], []
    for row in rows:
        games = row["games"] or []
        for gi in (0, 1):
            if gi == 1 and first_game_only:
                break
            game = games[gi] if gi < len(games) else None
            winner, strong = game_outcome(gi, game.get("score") if isinstance(game, dict) else None)
            if winner is None:
                continue  # unparsable game: dropped alone (v0.1)
            n = weight if strong else 1
            qids.extend([row["question_id"]] * n)
            models.extend([row["model"]] * n)
            winners.extend([winner] * n)
    return pd.DataFrame({"question_id": qids, "model_a": baseline, "model_b": models, "winner": winners},
                        columns=["question_id", "model_a", "model_b", "winner"])


# ----------------------------------------------------------------------------- BT, batched
@dataclass
class BattleTypes:
    """Battle rows reduced to types: type t = pair * 3 + outcome (0 a wins, 1 b wins, 2 tie)."""

    models: list[str]
    pair_a: np.ndarray  # (K,) model index of side a per pair
    pair_b: np.ndarray  # (K,)
    row_type: np.ndarray  # (n,) type of each battle row

    @property
    def n_types(self) -> int:
        return 3 * len(self.pair_a)


def battle_types(battles: pd.DataFrame) -> BattleTypes:
    models = list(pd.unique(pd.concat([battles["model_a"], battles["model_b"]], ignore_index=True)))
    index = {m: i for i, m in enumerate(models)}
    a = battles["model_a"].map(index).to_numpy()
    b = battles["model_b"].map(index).to_numpy()
    pair_codes, pair_of_row = np.unique(a * len(models) + b, return_inverse=True)
    outcome = battles["winner"].map({"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2})
    if outcome.isna().any():
        bad = battles["winner"][outcome.isna()].iloc[0]
        raise ValueError(f"battle winner must be model_a, model_b or tie, got {bad!r}")
    return BattleTypes(models, pair_codes // len(models), pair_codes % len(models),
                       pair_of_row * 3 + outcome.to_numpy(dtype=np.int64))


def fit_bt(types: BattleTypes, counts: np.ndarray, anchor: int, max_iter: int = 100,
           tol: float = 1e-12) -> np.ndarray:
    """Elo ratings for each round: ``counts`` is (R, 3K) type counts; returns (R, p), anchor = 1000.

    Maximises sum_k W_k log s(x_k) + (N_k - W_k) log(1 - s(x_k)), x_k = theta_a - theta_b, with
    W = a-wins + ties/2, N = all rows of the pair: the duplicated-row likelihood of the official fit.
    Newton's method for all rounds at once, the anchor's theta fixed at 0.
    """
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    R, p = counts.shape[0], len(types.models)
    c = counts.reshape(R, -1, 3)
    wins = c[:, :, 0] + 0.5 * c[:, :, 2]
    total = c.sum(axis=2)
    K = len(types.pair_a)
    D = np.zeros((K, p))
    D[np.arange(K), types.pair_a] += 1.0
    D[np.arange(K), types.pair_b] -= 1.0
    free = np.array([i for i in range(p) if i != anchor])
    Df = D[:, free]  # (K, p-1)
    theta = np.zeros((R, len(free)))
    for _ in range(max_iter):
        x = theta @ Df.T  # (R, K)
        s = 1.0 / (1.0 + np.exp(-x))
        grad = (wins - total * s) @ Df  # (R, p-1)
        w = total * s * (1 - s)  # (R, K)
        hess = np.einsum("rk,ki,kj->rij", w, Df, Df)
        hess[:, np.arange(len(free)), np.arange(len(free))] += 1e-12  # keeps separated models solvable
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        step = np.clip(step, -5.0, 5.0)  # damping for far-from-optimum starts
        theta = np.clip(theta + step, -50.0, 50.0)
        if np.max(np.abs(step)) < tol:
            break
    full = np.zeros((R, p))
    full[:, free] = theta
    # a model without any battle in a round has no estimate there (the official fit leaves it out: NaN)
    rows_per_model = np.abs(D).T @ total.T  # (p, R)
    full[(rows_per_model.T == 0)] = np.nan
    # natural-log scale -> elo: the design uses ln(10) per unit of coef, elo = 400 coef + 1000
    return SCALE * full / math.log(BASE) + INIT_RATING


def counts_of(types: BattleTypes, rows: np.ndarray | None = None) -> np.ndarray:
    t = types.row_type if rows is None else types.row_type[rows]
    return np.bincount(t, minlength=types.n_types)


def win_rate_vs(elo: float, elo_baseline: float) -> float:
    """``predict_win_rate`` then ``round(x * 100, 2)`` as ``get_win_rate_column``."""
    p = 1.0 / (1.0 + BASE ** ((elo_baseline - elo) / SCALE))
    return round(p * 100, 2)


def bootstrap_indices(n: int, num_rounds: int, seed: int = 42):
    """Yield the row indices of each official bootstrap round (DataFrame.sample(frac=1, replace=True))."""
    rs = np.random.RandomState(seed)
    for _ in range(num_rounds):
        yield rs.randint(0, n, size=n)


def leaderboard(battles: pd.DataFrame, baseline: str = "gpt-4-0314", num_rounds: int = 100,
                seed: int = 42) -> pd.DataFrame:
    """Official-compatible table: model, score, lower, upper (win rates vs baseline, 2 dp), sorted by score.

    ``battles`` must be in the official row order (file order, then question order, game 1 rows
    before game 2 rows) for the CIs to match a given official run.
    """
    if battles.empty:
        raise ValueError("no battles: every game was unparsable or no judgments were given")
    types = battle_types(battles)
    if baseline not in types.models:
        raise ValueError(f"baseline '{baseline}' does not appear in the battles")
    anchor = types.models.index(baseline)
    point = fit_bt(types, counts_of(types)[None], anchor)[0]
    n = len(battles)
    counts = np.stack([counts_of(types, idx) for idx in bootstrap_indices(n, num_rounds, seed)])
    boot = fit_bt(types, counts, anchor)
    return _table(types.models, point, boot, anchor)


def _table(models, point, boot, anchor) -> pd.DataFrame:
    lower = np.percentile(boot, 2.5, axis=0)
    upper = np.percentile(boot, 97.5, axis=0)
    rows = []
    for i, m in enumerate(models):
        rows.append({"model": m, "score": win_rate_vs(point[i], point[anchor]),
                     "lower": win_rate_vs(lower[i], lower[anchor]),
                     "upper": win_rate_vs(upper[i], upper[anchor])})
    df = pd.DataFrame(rows)
    # official: rows ordered by the point elo (descending), a stable order for ties
    order = np.argsort(-point, kind="stable")
    return df.iloc[order].reset_index(drop=True)


def clustered_bootstrap(battles: pd.DataFrame, baseline: str = "gpt-4-0314", num_rounds: int = 1000,
                        seed: int = 0) -> pd.DataFrame:
    """The harness's own CI: resample *questions* with replacement (all rows of a drawn question come
    along: both games and the copies of a strong verdict), refit, 2.5/97.5 percentiles.

    Not the official number: the official bootstrap resamples rows independently, which ignores
    that the rows of one question are correlated and gives narrower intervals.
    """
    types = battle_types(battles)
    if baseline not in types.models:
        raise ValueError(f"baseline '{baseline}' does not appear in the battles")
    anchor = types.models.index(baseline)
    qids, q_of_row = np.unique(battles["question_id"].astype(str).to_numpy(), return_inverse=True)
    per_q = np.zeros((len(qids), types.n_types))
    np.add.at(per_q, (q_of_row, types.row_type), 1.0)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(qids), size=(num_rounds, len(qids)))
    mult = np.stack([np.bincount(d, minlength=len(qids)) for d in draws]).astype(float)
    boot = fit_bt(types, mult @ per_q, anchor)
    point = fit_bt(types, per_q.sum(axis=0)[None], anchor)[0]
    return _table(types.models, point, boot, anchor)


def closed_form_scores(battles: pd.DataFrame) -> pd.Series:
    """Per model_b: 100 * (model_b wins + ties/2) / rows. Equals the BT score when every battle is
    against the single baseline (the MLE decouples per model). A unit-test oracle."""
    w = (battles["winner"] == "model_b").astype(float) + 0.5 * (battles["winner"] == "tie")
    return w.groupby(battles["model_b"]).mean() * 100


def ci_string(score: float, lower: float, upper: float) -> str:
    """The ``CI`` column of the official ``--output`` CSV."""
    return f"(-{score - lower:.2f}, +{upper - score:.2f})"


def check_unique_questions(rows: Sequence[dict], where: str) -> None:
    seen = set()
    for i, r in enumerate(rows):
        key = (r["model"], r["question_id"])
        if key in seen:
            raise ValueError(f"{where}: line {i + 1}: duplicate question_id {r['question_id']!r} "
                             f"for model {r['model']!r}")
        seen.add(key)
