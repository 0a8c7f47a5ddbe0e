"""Statistics for paired model comparisons and judge reliability.

Pure functions over numpy arrays: no files, no plotting. Every resampling procedure is
vectorised and seeded, so a report is reproducible and 10,000 rounds cost milliseconds.

Conventions (stated once, used everywhere):
* Paired data: ``a[i]`` and ``b[i]`` are two systems' scores on the same instance ``i``.
  Differences are ``a - b``.
* Percentile bootstrap: resample instance indices with replacement, jointly for both
  systems; the CI is the (alpha/2, 1-alpha/2) percentile of the resampled mean difference.
  Its two-sided p-value is ``2 * min(P*(diff <= 0), P*(diff >= 0))`` with the +1 correction
  ``(count + 1) / (B + 1)`` (never exactly 0), capped at 1.
* Wilcoxon signed-rank: ``zero_method`` is reported with the result; default ``'wilcox'``
  drops zero differences (the classic test); ``'pratt'`` and ``'zsplit'`` keep them.
* Sign test: ties are excluded by default (``ties='exclude'``); ``ties='split'`` gives half
  of the ties to each side (an odd tie left over is dropped). The choice is reported.
* McNemar: exact binomial version when the discordant count is below 25, else the
  chi-square version with continuity correction (statsmodels).
* Holm: ``statsmodels.stats.multitest.multipletests(p, method='holm')`` (explicitly Holm,
  not the statsmodels default Holm-Sidak).
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from scipy import stats as sps

DEFAULT_B = 10_000
ALPHA = 0.05


# ----------------------------------------------------------------------------- helpers

def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired data must be two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired data is empty: the two systems share no scored instance")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired data contains NaN or infinite scores; drop missing instances first")
    return a, b


def _vector(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty 1-d array of scores, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("scores contain NaN or infinite values; drop missing instances first")
    return x


def _two_sided_from_counts(n_le: int, n_ge: int, total: int, plus_one: bool = True) -> float:
    adj = 1 if plus_one else 0
    p_le = (n_le + adj) / (total + adj)
    p_ge = (n_ge + adj) / (total + adj)
    return float(min(1.0, 2.0 * min(p_le, p_ge)))


# ----------------------------------------------------------------------------- bootstrap

@functools.lru_cache(maxsize=2)  # 80 MB each at n=1,000, B=10,000
def bootstrap_weights(n: int, B: int = DEFAULT_B, seed: int = 0) -> np.ndarray:
    """(B, n) matrix of resampling counts: row r says how often each instance is drawn.

    Resampled means of any length-n vector x are then one product ``W @ x / n``, and the same
    draws serve every comparison with n instances (a comparison's result therefore does not
    depend on which other comparisons are in the report). Cached per (n, B, seed).
    """
    if n < 1 or B < 1:
        raise ValueError(f"bootstrap needs n >= 1 and B >= 1, got n={n}, B={B}")
    rng = np.random.default_rng(seed)
    out = np.empty((B, n), dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bounds the int64 index buffer to ~16 MB
    for start in range(0, B, chunk):
        stop = min(B, start + chunk)
        rows = stop - start
        idx = rng.integers(0, n, size=(rows, n))
        flat = (idx + (np.arange(rows)[:, None] * n)).ravel()
        out[start:stop] = np.bincount(flat, minlength=rows * n).reshape(rows, n)
    out.setflags(write=False)
    return out


def bootstrap_means(x, B: int = DEFAULT_B, seed: int = 0) -> np.ndarray:
    """Means of B bootstrap resamples of x (1-d) or of each column of x (2-d, rows = instances)."""
    x = np.asarray(x, dtype=float)
    w = bootstrap_weights(x.shape[0], B, seed)
    return (w @ x) / x.shape[0]


def bootstrap_mean_ci(x, B: int = DEFAULT_B, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of x with a percentile bootstrap CI and the bootstrap standard error."""
    x = _vector(x)
    boot = bootstrap_means(x, B, seed)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(x.mean()), "lower": float(lo), "upper": float(hi),
            "se": float(boot.std(ddof=1)) if B > 1 else float("nan"), "n": int(x.size), "B": B}


def bootstrap_mean_cis(columns, B: int = DEFAULT_B, seed: int = 0, level: float = 0.95) -> list[dict]:
    """``bootstrap_mean_ci`` for each column of an (n, k) matrix in one product (same draws,
    same numbers as calling it per column)."""
    x = np.asarray(columns, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0 or not np.isfinite(x).all():
        raise ValueError(f"expected a finite (instances, columns) matrix, got shape {x.shape}")
    boot = bootstrap_means(x, B, seed)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
    se = boot.std(axis=0, ddof=1) if B > 1 else np.full(x.shape[1], np.nan)
    mean = x.mean(axis=0)
    return [{"mean": float(mean[k]), "lower": float(lo[k]), "upper": float(hi[k]), "se": float(se[k]),
             "n": int(x.shape[0]), "B": B} for k in range(x.shape[1])]


def paired_bootstrap_columns(diffs, B: int = DEFAULT_B, seed: int = 0, level: float = 0.95) -> list[dict]:
    """``paired_bootstrap`` for each column of an (n, k) matrix of paired differences, in one
    matrix product (identical numbers to calling it per column)."""
    d = np.asarray(diffs, dtype=float)
    boot = bootstrap_means(d, B, seed)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
    n_le, n_ge = (boot <= 0).sum(axis=0), (boot >= 0).sum(axis=0)
    mean = d.mean(axis=0)
    return [{"diff": float(mean[k]), "lower": float(lo[k]), "upper": float(hi[k]),
             "p_value": _two_sided_from_counts(int(n_le[k]), int(n_ge[k]), B),
             "B": B, "seed": seed, "level": level, "n": int(d.shape[0])} for k in range(d.shape[1])]


def paired_bootstrap(a, b, B: int = DEFAULT_B, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap of mean(a - b): percentile CI and two-sided p-value (see module doc)."""
    a, b = _pair(a, b)
    return paired_bootstrap_columns((a - b)[:, None], B, seed, level)[0]


# ----------------------------------------------------------------------------- classic paired tests

def paired_t(a, b) -> dict:
    """Paired t-test on the differences (two-sided). Zero-variance differences give p=1 if the
    mean difference is 0, else p=0 (the t statistic is infinite)."""
    a, b = _pair(a, b)
    d = a - b
    n = d.size
    if n < 2:
        return {"t": float("nan"), "df": n - 1, "p_value": float("nan")}
    mean, sd = d.mean(), d.std(ddof=1)
    if sd == 0:
        return {"t": 0.0 if mean == 0 else math.copysign(math.inf, mean), "df": n - 1,
                "p_value": 1.0 if mean == 0 else 0.0}
    t = mean / (sd / math.sqrt(n))
    p = 2 * sps.t.sf(abs(t), df=n - 1)
    return {"t": float(t), "df": n - 1, "p_value": float(p)}


def wilcoxon(a, b, zero_method: str = "wilcox") -> dict:
    """Wilcoxon signed-rank test of a - b (two-sided, scipy). All-zero differences: p=1."""
    a, b = _pair(a, b)
    d = a - b
    if zero_method not in ("wilcox", "pratt", "zsplit"):
        raise ValueError(f"zero_method must be 'wilcox', 'pratt' or 'zsplit', got {zero_method!r}")
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return {"statistic": float("nan"), "p_value": 1.0, "zero_method": zero_method,
                "n_nonzero": 0, "note": "all differences are zero"}
    res = sps.wilcoxon(d, zero_method=zero_method, alternative="two-sided")
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "zero_method": zero_method,
            "n_nonzero": nonzero}


def win_loss_tie(a, b) -> tuple[int, int, int]:
    """Counts of a > b, a < b, a == b per instance."""
    a, b = _pair(a, b)
    return int((a > b).sum()), int((a < b).sum()), int((a == b).sum())


def sign_test(wins: int, losses: int, ties: int = 0, ties_mode: str = "exclude") -> dict:
    """Exact two-sided sign test (binomial, p=0.5) on win/loss counts.

    ties_mode='exclude' drops ties; 'split' adds ties//2 to each side (an odd tie is dropped)."""
    if min(wins, losses, ties) < 0:
        raise ValueError(f"win/loss/tie counts must be >= 0, got {wins}/{losses}/{ties}")
    if ties_mode == "exclude":
        w, l = wins, losses
    elif ties_mode == "split":
        w, l = wins + ties // 2, losses + ties // 2
    else:
        raise ValueError(f"ties_mode must be 'exclude' or 'split', got {ties_mode!r}")
    if w + l == 0:
        return {"wins": wins, "losses": losses, "ties": ties, "ties_mode": ties_mode, "p_value": 1.0}
    p = sps.binomtest(w, w + l, 0.5, alternative="two-sided").pvalue
    return {"wins": wins, "losses": losses, "ties": ties, "ties_mode": ties_mode, "p_value": float(p)}


def is_binary(x) -> bool:
    x = np.asarray(x, dtype=float)
    return bool(x.size) and bool(np.isin(x, (0.0, 1.0)).all())


def mcnemar(a, b) -> dict:
    """McNemar test for paired binary outcomes (1 = success). Exact when discordant < 25."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a, b = _pair(a, b)
    if not (is_binary(a) and is_binary(b)):
        raise ValueError("McNemar needs binary (0/1) outcomes for both systems")
    a, b = a.astype(bool), b.astype(bool)
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    discordant = int(table[0, 1] + table[1, 0])
    exact = discordant < 25
    if discordant == 0:
        return {"table": table.tolist(), "exact": exact, "statistic": 0.0, "p_value": 1.0}
    res = sm_mcnemar(table, exact=exact, correction=True)
    return {"table": table.tolist(), "exact": exact, "statistic": float(res.statistic),
            "p_value": float(res.pvalue)}


@functools.lru_cache(maxsize=2)
def _sign_matrix(n: int, B: int, seed: int) -> tuple[np.ndarray, bool]:
    """+-1 matrix of within-pair swaps; all 2^n patterns when that is at most B (exact test)."""
    if 2 ** min(n, 63) <= B:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        exact = True
    else:
        rng = np.random.default_rng(seed)
        signs = rng.integers(0, 2, size=(B, n)).astype(np.float64) * 2 - 1
        exact = False
    signs.setflags(write=False)
    return signs, exact


def permutation_test_columns(diffs, B: int = DEFAULT_B, seed: int = 0) -> list[dict]:
    """``permutation_test`` for each column of an (n, k) matrix of paired differences."""
    d = np.asarray(diffs, dtype=float)
    n = d.shape[0]
    signs, exact = _sign_matrix(n, B, seed)
    null = signs @ d / n
    observed = d.mean(axis=0)
    # scipy compares with a relative tolerance so floating-point ties count as ties
    tol = np.abs(observed) * 1e-14
    n_le = (null <= observed + tol).sum(axis=0)
    n_ge = (null >= observed - tol).sum(axis=0)
    return [{"statistic": float(observed[k]),
             "p_value": _two_sided_from_counts(int(n_le[k]), int(n_ge[k]), null.shape[0], plus_one=not exact),
             "exact": exact, "n_resamples": int(null.shape[0]), "seed": seed} for k in range(d.shape[1])]


def permutation_test(a, b, B: int = DEFAULT_B, seed: int = 0) -> dict:
    """Paired permutation test of mean(a - b): each resample swaps a[i] and b[i] at random.

    Same semantics as ``scipy.stats.permutation_test((a, b), mean-diff,
    permutation_type='samples')``: exact enumeration when 2^n <= B, otherwise B random
    swaps with the +1 correction; two-sided p = 2 * min(one-sided p's), capped at 1. The
    swaps are a sign matrix times the differences, so 10,000 resamples are one product.
    """
    a, b = _pair(a, b)
    return permutation_test_columns((a - b)[:, None], B, seed)[0]


def permutation_test_scipy(a, b, B: int = DEFAULT_B, seed: int = 0) -> dict:
    """The same test through scipy (slower; kept as the reference implementation)."""
    a, b = _pair(a, b)
    res = sps.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                               permutation_type="samples", vectorized=True, n_resamples=B,
                               alternative="two-sided", random_state=seed)
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue)}


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels, method='holm'); NaN entries stay NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


# ----------------------------------------------------------------------------- effect sizes, power

def cohens_dz(a, b) -> float:
    """Cohen's d_z: mean difference over the standard deviation of the differences (ddof=1)."""
    a, b = _pair(a, b)
    d = a - b
    if d.size < 2:
        return float("nan")
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())
    return float(d.mean() / sd)


def rank_biserial(a, b) -> float:
    """Matched-pairs rank-biserial correlation (T+ - T-) / (T+ + T-), zero differences dropped."""
    a, b = _pair(a, b)
    d = a - b
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = sps.rankdata(np.abs(d))
    t_plus, t_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((t_plus - t_minus) / (t_plus + t_minus))


def minimum_detectable_difference(sd_diff: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test at this n detects with this power.

    Solved with statsmodels' TTestPower for the standardised effect, times the SD of the
    differences."""
    if n < 2 or not np.isfinite(sd_diff):
        return float("nan")
    if sd_diff == 0:
        return 0.0
    return float(_detectable_dz(int(n), alpha, power) * sd_diff)


@functools.lru_cache(maxsize=256)
def _detectable_dz(n: int, alpha: float, power: float) -> float:
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power,
                                          alternative="two-sided"))


def compare_paired(a, b, B: int = DEFAULT_B, seed: int = 0, zero_method: str = "wilcox",
                   ties_mode: str = "exclude", bootstrap: dict | None = None, permutation: dict | None = None) -> dict:
    """Every test and effect size for one paired comparison (a minus b).

    ``bootstrap``/``permutation``: results already computed in a batch (``*_columns``)."""
    a, b = _pair(a, b)
    d = a - b
    w, l, t = win_loss_tie(a, b)
    out = {
        "n": int(d.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
        "bootstrap": bootstrap or paired_bootstrap(a, b, B, seed),
        "paired_t": paired_t(a, b),
        "wilcoxon": wilcoxon(a, b, zero_method),
        "sign_test": sign_test(w, l, t, ties_mode),
        "permutation": permutation or permutation_test(a, b, B, seed),
        "effect": {"mean_diff": float(d.mean()), "cohens_dz": cohens_dz(a, b),
                   "rank_biserial": rank_biserial(a, b)},
        "mdd": minimum_detectable_difference(float(d.std(ddof=1)) if d.size > 1 else float("nan"), d.size),
    }
    if is_binary(a) and is_binary(b):
        out["mcnemar"] = mcnemar(a, b)
    return out


# ----------------------------------------------------------------------------- judge reliability

def weighted_kappa(r1, r2, weights: str | None = "quadratic", labels=None) -> float:
    """Cohen's kappa between two raters (sklearn); quadratic weights for ordinal scales."""
    from sklearn.metrics import cohen_kappa_score

    r1, r2 = np.asarray(r1), np.asarray(r2)
    if r1.shape != r2.shape or r1.size == 0:
        raise ValueError(f"kappa needs two equal-length non-empty rating lists, got {r1.shape} and {r2.shape}")
    return float(cohen_kappa_score(r1, r2, weights=weights, labels=labels))


def krippendorff_alpha(ratings, level: str = "ordinal") -> float:
    """Krippendorff's alpha; ``ratings`` is raters x units, NaN for a missing rating."""
    import krippendorff

    data = np.asarray(ratings, dtype=float)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"Krippendorff's alpha needs a raters x units matrix with >= 2 raters, got {data.shape}")
    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise ValueError(f"level must be nominal/ordinal/interval/ratio, got {level!r}")
    if np.unique(data[np.isfinite(data)]).size < 2:
        return float("nan")  # no variation at all: alpha is undefined
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def raw_agreement(r1, r2, tie=None) -> dict:
    """Share of items where two judges agree (MT-Bench style), with ties and without.

    ``tie`` is the value that means a tie (e.g. 'tie', 'C' or 0.5); 'without ties' drops
    items where either judge said tie."""
    r1, r2 = list(r1), list(r2)
    if len(r1) != len(r2) or not r1:
        raise ValueError(f"agreement needs two equal-length non-empty lists, got {len(r1)} and {len(r2)}")
    agree = [x == y for x, y in zip(r1, r2)]
    out = {"n": len(agree), "agreement": float(np.mean(agree))}
    if tie is not None:
        kept = [ag for x, y, ag in zip(r1, r2, agree) if x != tie and y != tie]
        out["n_without_ties"] = len(kept)
        out["agreement_without_ties"] = float(np.mean(kept)) if kept else float("nan")
    return out


ARENA_MIRROR = {"A>>B": "B>>A", "A>B": "B>A", "A=B": "A=B", "B>A": "A>B", "B>>A": "A>>B"}
MT_BENCH_MIRROR = {"A": "B", "B": "A", "C": "C", "tie": "tie"}


def position_swap_consistency(game1, game2, mirror: dict | None = None) -> dict:
    """How often a pairwise judge gives the same verdict when the two answers swap places.

    game1[i] and game2[i] are the verdicts (in the judge's own A/B labels) on the same pair
    shown in both orders. Consistent: game2 is the mirror of game1. Direction-consistent:
    the same winner (or tie) ignoring strength ('>>' vs '>'). Unparsed verdicts (None) are
    skipped and counted."""
    mirror = ARENA_MIRROR if mirror is None else mirror
    g1, g2 = list(game1), list(game2)
    if len(g1) != len(g2):
        raise ValueError(f"position-swap consistency needs equal-length verdict lists, got {len(g1)} and {len(g2)}")

    pairs = [(x, y) for x, y in zip(g1, g2) if x in mirror and y in mirror]
    if not pairs:
        return {"n": 0, "skipped": len(g1), "consistency": float("nan"), "direction_consistency": float("nan")}
    same = [mirror[x] == y for x, y in pairs]
    same_dir = [mirror[x].replace(">>", ">") == y.replace(">>", ">") for x, y in pairs]
    return {"n": len(pairs), "skipped": len(g1) - len(pairs), "consistency": float(np.mean(same)),
            "direction_consistency": float(np.mean(same_dir))}


def rank_correlation(ours: dict, published: dict, B: int = 1000, seed: int = 0) -> dict:
    """Spearman rho and Kendall tau-b between two model->score maps (shared models only),
    with percentile bootstrap CIs over models."""
    models = sorted(set(ours) & set(published))
    if len(models) < 3:
        raise ValueError(f"rank correlation needs >= 3 models in both leaderboards, found {len(models)}: {models}")
    x = np.array([ours[m] for m in models], dtype=float)
    y = np.array([published[m] for m in models], dtype=float)
    rho = sps.spearmanr(x, y)
    tau = sps.kendalltau(x, y, variant="b")
    rng = np.random.default_rng(seed)
    boot_rho, boot_tau = [], []
    for _ in range(B):
        idx = rng.integers(0, len(models), len(models))
        if np.unique(x[idx]).size < 2 or np.unique(y[idx]).size < 2:
            continue  # a resample with constant ranks has no correlation
        boot_rho.append(sps.spearmanr(x[idx], y[idx]).statistic)
        boot_tau.append(sps.kendalltau(x[idx], y[idx]).statistic)

    def ci(v):
        return [float(q) for q in np.nanpercentile(v, [2.5, 97.5])] if v else [float("nan")] * 2

    return {"n_models": len(models), "models": models,
            "spearman": float(rho.statistic), "spearman_p": float(rho.pvalue), "spearman_ci": ci(boot_rho),
            "kendall_tau_b": float(tau.statistic), "kendall_p": float(tau.pvalue), "kendall_ci": ci(boot_tau)}
