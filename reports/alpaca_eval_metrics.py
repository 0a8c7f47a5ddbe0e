"""AlpacaEval 2.0 statistics, with the semantics of the official ``alpaca_eval`` package (0.6.6).

Pure functions on pandas/numpy: no file I/O here (``tasks/alpaca_eval.py`` reads files).

Preference coding (``alpaca_eval.metrics.helpers``): 1 = baseline (output_1) wins, 2 = model (output_2)
wins, 0 or 1.5 = draw, values in between are the weighted judge's 1 + P(model preferred).
Rows outside [1, 2] (after 0 -> 1.5) or NaN are dropped from n_total, but ``n_draws`` is counted
before that drop, exactly as the official code does.

Length-controlled win rate (``alpaca_eval.metrics.glm_winrate``, glm ``length_controlled_v1``):
P(model preferred) = sigmoid(theta_len * tanh(delta) + theta_d * d_k + theta_m * not_gamed),
delta = (len(output_1) - len(output_2)) / std(ddof=1), not centred; instruction k = row position.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

#: column names of the published GLM weights CSV (patsy term names)
TERM_LENGTH = "np.tanh(std_delta_len)"
TERM_DIFFICULTY = "instruction_difficulty"
TERM_NOT_GAMED = "not_gamed_baseline.astype(float)"
GLM_TERMS = [TERM_LENGTH, TERM_DIFFICULTY, TERM_NOT_GAMED]
#: weight of the gamed-baseline rows: lambda / 2 (two gamed baselines), as in length_controlled_v1
REGULARIZE_TO_BASELINE_LAMBDA = 0.2


# ----------------------------------------------------------------------------- raw win rate
def _as_float_series(preferences: Sequence) -> pd.Series:
    s = pd.Series(list(preferences) if not isinstance(preferences, pd.Series) else preferences.to_numpy(),
                  dtype="object")
    return pd.to_numeric(s, errors="raise").astype(float)


def valid_preference_mask(preferences: Sequence) -> pd.Series:
    """True where a preference counts (in [1, 2] after the legacy 0 -> 1.5 draw mapping)."""
    p = _as_float_series(preferences).replace({0.0: 1.5})
    return (p >= 1) & (p <= 2)


def head2head(preferences: Sequence) -> dict:
    """win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total (AbsoluteScoringRule semantics)."""
    p = _as_float_series(preferences).replace({0.0: 1.5})
    n_draws = int(((p == 1.5) | (p == 0)).sum())
    y = p[(p >= 1) & (p <= 2)] - 1
    return dict(
        win_rate=float(y.mean() * 100),
        standard_error=float(y.sem() * 100),  # pandas sem: ddof=1
        n_wins=int((y > 0.5).sum()),
        n_wins_base=int((y < 0.5).sum()),
        n_draws=n_draws,
        n_total=int(len(y)),
    )


def discrete_win_rate(preferences: Sequence) -> float:
    """ZeroOneScoringRule: 1.5 -> 0 (draw), then round to {1, 2}; draws count one half."""
    p = _as_float_series(preferences).replace({1.5: 0.0}).round()  # round half to even, like pandas
    p = p.replace({0.0: 1.5})
    y = p[(p >= 1) & (p <= 2)] - 1
    return float(y.mean() * 100)


def winrate_metrics(preferences: Sequence) -> dict:
    """Everything ``alpaca_eval.metrics.get_winrate`` returns."""
    out = head2head(preferences)
    out["discrete_win_rate"] = discrete_win_rate(preferences)
    return out


def avg_length(outputs: Sequence[str]) -> int:
    """The leaderboard's ``avg_length``: int(mean number of characters of the model outputs)."""
    lengths = pd.Series(list(outputs), dtype="object").str.len()
    return int(lengths.mean())


# ----------------------------------------------------------------------------- LC: prediction
def logistic(x):
    return np.exp(-np.logaddexp(0, -np.asarray(x, dtype=float)))


def predict_lc_winrate(weights: pd.DataFrame, model: str, baseline: str,
                       difficulty: Sequence[float]) -> float:
    """LC win rate (in %) of ``model`` vs ``baseline`` from published GLM weights (``predict_winrate``).

    mean_k sigmoid((theta_m - theta_b)_not_gamed + (theta_m - theta_b)_difficulty * d_k), over all
    instructions of the difficulty file (it does not look at any annotation).
    """
    for name in (model, baseline):
        if name not in weights.index:
            raise KeyError(f"model '{name}' is not in the GLM weights table")
    missing = [t for t in (TERM_DIFFICULTY, TERM_NOT_GAMED) if t not in weights.columns]
    if missing:
        raise ValueError(f"GLM weights table lacks column(s) {missing}")
    delta = weights.loc[model] - weights.loc[baseline]
    d = np.asarray(difficulty, dtype=float)
    if d.size == 0 or not np.isfinite(d).all():
        raise ValueError("instruction difficulty must be a non-empty vector of finite numbers")
    return float(logistic(delta[TERM_NOT_GAMED] + delta[TERM_DIFFICULTY] * d).mean() * 100)


def reconstruct_difficulty(per_instruction_predictions: dict[str, Sequence[float]],
                           weights: pd.DataFrame) -> pd.DataFrame:
    """d_k = (logit p_hat_k - theta_not_gamed) / theta_difficulty, per model, and their median.

    ``per_instruction_predictions`` maps a model to its GLM's counterfactual per-instruction
    predictions p_hat_k (delta = 0), in canonical instruction order (as stored by arena-hard-auto's
    ``notebook/alpaca_2.0_lc_results.jsonl``). This inverts ``p_hat_k = sigmoid(theta_m + theta_d d_k)``.
    Returns a frame with one column per usable model plus ``instruction_difficulty`` (the median) and
    ``std`` (disagreement between models), indexed 0..n-1. A model with fewer predictions than
    others contributes to the first instructions only.
    """
    cols = {}
    for model, preds in per_instruction_predictions.items():
        if model not in weights.index:
            continue
        theta_d = float(weights.loc[model, TERM_DIFFICULTY])
        theta_m = float(weights.loc[model, TERM_NOT_GAMED])
        if theta_d == 0:
            continue  # an L1-zeroed difficulty weight carries no information about d_k
        p = np.clip(np.asarray(preds, dtype=float), 1e-15, 1 - 1e-15)
        cols[model] = (np.log(p) - np.log1p(-p) - theta_m) / theta_d
    if not cols:
        raise ValueError("no model with a non-zero difficulty weight to reconstruct d_k from")
    # a model with fewer rows covers a prefix of the instructions (upstream pairs rows by position)
    df = pd.DataFrame({m: pd.Series(v) for m, v in cols.items()})
    # the median: one model whose stored predictions disagree slightly (rounding, a later refit) should
    # not move d_k; with it the prediction reproduces the leaderboard's LC to ~1e-10 for most models
    df["instruction_difficulty"] = df[list(cols)].median(axis=1)
    df["std"] = df[list(cols)].std(axis=1, ddof=1) if len(cols) > 1 else 0.0
    df.index.name = "index"
    return df


# ----------------------------------------------------------------------------- LC: full fit
def difficulty_from_df_gamed(df_gamed: pd.DataFrame) -> pd.Series:
    """The difficulty lookup exactly as glm_winrate builds it: first row of each ``index`` value,
    then looked up by the *row label* of df_gamed (not by its ``index`` column)."""
    for col in ("index", "instruction_difficulty"):
        if col not in df_gamed.columns:
            raise ValueError(f"df_gamed.csv lacks the column '{col}'")
    return df_gamed.drop_duplicates("index")["instruction_difficulty"]


def lc_features(output_1: Sequence[str], output_2: Sequence[str], preference: Sequence,
                difficulty_lookup: pd.Series) -> pd.DataFrame:
    """Featurised annotation rows (row position = instruction index), as ``_get_featurized_data``."""
    o1 = pd.Series(list(output_1), dtype="object")
    o2 = pd.Series(list(output_2), dtype="object")
    delta = o1.str.len() - o2.str.len()  # baseline minus model, characters
    n = len(o1)
    missing = [i for i in range(n) if i not in difficulty_lookup.index]
    if missing:
        raise ValueError(f"no instruction difficulty for row positions {missing[:5]}... ({len(missing)} rows)")
    pref = _as_float_series(preference).replace({0.0: 1.5}) - 1
    return pd.DataFrame({
        "preference": pref.to_numpy(),
        "index": np.arange(n),
        "std_delta_len": (delta / delta.std()).to_numpy(),  # ddof=1, not centred
        "instruction_difficulty": difficulty_lookup.loc[list(range(n))].to_numpy(dtype=float),
        "not_gamed_baseline": True,
    })


def _design(df: pd.DataFrame) -> np.ndarray:
    """Columns in GLM_TERMS order: tanh(delta), difficulty, not_gamed (no intercept)."""
    return np.column_stack([
        np.tanh(df["std_delta_len"].to_numpy(dtype=float)),
        df["instruction_difficulty"].to_numpy(dtype=float),
        df["not_gamed_baseline"].to_numpy().astype(float),
    ])


def _continuous_logloss(y_true, y_pred, true_prob, true_sample_weight=None):
    """Weighted log loss with continuous targets on the duplicated (y=1 / y=0) rows."""
    y = np.where(y_true == 1, true_prob, 1 - true_prob)
    p = np.clip(y_pred, 1e-15, 1 - 1e-15)
    ll = y * np.log(p) + (1 - y) * np.log(1 - p)
    if true_sample_weight is not None:
        ll = ll * true_sample_weight
    return -np.mean(ll)


def fit_lc_glm(features: pd.DataFrame, df_gamed: pd.DataFrame | None,
               regularize_to_baseline_lambda: float | None = REGULARIZE_TO_BASELINE_LAMBDA,
               n_splits: int = 5) -> dict:
    """Fit the length-controlled GLM for one model and return its LC metrics and weights.

    ``features`` comes from :func:`lc_features`; ``df_gamed`` is the official ``df_gamed.csv``
    (rows of the gamed baselines: preference in [0,1], std_delta_len, instruction_difficulty,
    not_gamed_baseline False). Same estimator as alpaca_eval: L1 liblinear LogisticRegressionCV,
    GroupKFold(5) over original rows, continuous targets by row duplication, random_state 123.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    if regularize_to_baseline_lambda:
        if df_gamed is None:
            raise ValueError("the length_controlled_v1 GLM needs df_gamed.csv (regularisation to the gamed "
                             "baselines); pass it or use regularize_to_baseline_lambda=None explicitly")
        need = ["preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"]
        miss = [c for c in need if c not in df_gamed.columns]
        if miss:
            raise ValueError(f"df_gamed.csv lacks column(s) {miss}")
        gamed = df_gamed[need].copy()
        gamed["not_gamed_baseline"] = gamed["not_gamed_baseline"].astype(bool)
        train = pd.concat([gamed, features[need]], axis=0, ignore_index=True)
        not_gamed = train["not_gamed_baseline"].to_numpy(dtype=bool)
        weight = not_gamed.astype(float) + (regularize_to_baseline_lambda * (~not_gamed)).astype(float) / 2
    else:
        train = features.reset_index(drop=True)
        weight = None

    keep = train["preference"].notna().to_numpy()
    train = train[keep].reset_index(drop=True)
    if weight is not None:
        weight = weight[keep]
    X = _design(train)
    prob = train["preference"].to_numpy(dtype=float)
    n = len(train)
    X_dup = np.vstack([X, X])
    y_dup = np.concatenate([np.ones(n), np.zeros(n)])
    true_prob = np.concatenate([prob, 1 - prob])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    if weight is None:
        true_weight = None
        sample_weight = true_prob
    else:
        true_weight = np.concatenate([weight, weight])
        sample_weight = true_prob * true_weight

    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.8+: penalty= is deprecated
        scorer = make_scorer(_continuous_logloss, response_method="predict_proba", greater_is_better=False)
        scorer = scorer.set_score_request(true_sample_weight=True, true_prob=True)
        model = LogisticRegressionCV(cv=GroupKFold(n_splits=n_splits), scoring=scorer, random_state=123,
                                     dual=False, penalty="l1", solver="liblinear", n_jobs=None,
                                     fit_intercept=False)
        model.set_fit_request(sample_weight=True)
        fit_kwargs = dict(groups=groups, true_prob=true_prob)
        if true_weight is not None:
            fit_kwargs["true_sample_weight"] = true_weight
        model.fit(X_dup, y_dup, sample_weight=sample_weight, **fit_kwargs)

    coef = model.coef_[0]
    test = _design(features.assign(std_delta_len=0.0))  # counterfactual: no length difference
    p_hat = model.predict_proba(test)[:, 1]
    return lc_result(p_hat, dict(zip(GLM_TERMS, map(float, coef))))


def lc_result(p_hat: np.ndarray, weights: dict) -> dict:
    p = pd.Series(np.asarray(p_hat, dtype=float))
    return {
        "length_controlled_winrate": float(p.mean() * 100),
        "lc_standard_error": float(p.sem() * 100),  # spread of predictions, not a CI of LC
        "glm_weights": weights,
        "glm_preference": p.to_numpy(),
    }


def lc_for_baseline_itself(n: int) -> dict:
    """The model *is* the baseline: LC is 50 by construction and the weights are 0."""
    return lc_result(np.full(n, 0.5), {t: 0.0 for t in GLM_TERMS})


def is_extreme_change(win_rate: float, lc: float, abs_diff: float = 10, rel_diff: float = 4) -> bool:
    """alpaca_eval's warning rule for an LC far from the raw win rate."""
    too_small = lc < min(win_rate - win_rate / rel_diff, win_rate - abs_diff)
    too_large = lc > max(win_rate + (100 - win_rate) / rel_diff, win_rate + abs_diff)
    return bool(too_small or too_large)


# ----------------------------------------------------------------------------- judge output
def preference_from_top_logprobs(top: Sequence[tuple[str, float]], numerator_token: str = "m",
                                 denominator_tokens: Sequence[str] = ("m", "M")) -> float:
    """alpaca_eval ``logprob_parser`` (is_binarize False): 2 - P(numerator)/P(denominator set).

    Tokens are matched exactly (no stripping); an absent label token has probability 0; if none of
    the tokens is among the top logprobs the result is NaN (an unparsable annotation).
    """
    wanted = set(denominator_tokens) | {numerator_token}
    lp = {}
    for tok, logprob in top:
        if tok in wanted:
            lp[tok] = float(logprob)  # a later duplicate overwrites, like the dict comprehension upstream
    if not lp:
        return math.nan
    num = lp.get(numerator_token, -math.inf)
    den = np.logaddexp.reduce([lp.get(t, -math.inf) for t in denominator_tokens])
    return float(2 - math.exp(num - den))
