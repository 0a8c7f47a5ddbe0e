"""reports.stats against scipy/statsmodels/sklearn and against first-principles formulas."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from reports import stats


def _paired(n, shift=0.2, seed=1):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n)
    return base + shift + rng.normal(scale=0.8, size=n), base + rng.normal(scale=0.8, size=n)


def test_bootstrap_weights_are_the_plain_resampling():
    # the count-matrix trick must give exactly the means of explicit index resamples
    rng_x = np.random.default_rng(3)
    x = rng_x.normal(size=50)
    idx = np.random.default_rng(7).integers(0, 50, size=(500, 50))
    np.testing.assert_allclose(stats.bootstrap_means(x, B=500, seed=7), x[idx].mean(axis=1), rtol=1e-12)
    w = stats.bootstrap_weights(50, 500, 7)
    assert (w.sum(axis=1) == 50).all()


def test_paired_bootstrap_coverage_by_simulation():
    # 1,000 synthetic paired datasets with a known true difference; 95% intervals must cover it 93-97%
    true_diff, n, covered = 0.3, 100, 0
    rng = np.random.default_rng(2024)
    for k in range(1000):
        base = rng.normal(size=n)
        a = base + true_diff + rng.normal(scale=1.0, size=n)
        b = base + rng.normal(scale=1.0, size=n)
        res = stats.paired_bootstrap(a, b, B=1000, seed=k)
        covered += res["lower"] <= true_diff <= res["upper"]
    assert 0.93 <= covered / 1000 <= 0.97, covered


def test_paired_bootstrap_p_value_behaves():
    a, b = _paired(300, shift=0.5)
    strong = stats.paired_bootstrap(a, b, B=2000, seed=0)
    assert strong["p_value"] == pytest.approx(1 / 2001 * 2)  # no resample crosses 0: (0+1)/(B+1), two-sided
    assert strong["lower"] < strong["diff"] < strong["upper"]
    same = stats.paired_bootstrap(a, a, B=2000, seed=0)
    assert same["p_value"] == 1.0 and same["diff"] == 0.0


def test_bootstrap_mean_ci_close_to_normal_theory():
    x = np.random.default_rng(5).normal(loc=2.0, scale=3.0, size=2000)
    ci = stats.bootstrap_mean_ci(x, B=4000, seed=1)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert ci["se"] == pytest.approx(se, rel=0.08)
    assert ci["lower"] == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert ci["upper"] == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)


def test_paired_t_matches_scipy():
    a, b = _paired(40)
    ours = stats.paired_t(a, b)
    ref = sps.ttest_rel(a, b)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert stats.paired_t([1, 2, 3], [1, 2, 3])["p_value"] == 1.0


def test_wilcoxon_matches_normal_approximation_and_states_zero_method():
    a, b = _paired(200, shift=0.15, seed=4)
    d = a - b
    ranks = sps.rankdata(np.abs(d))
    t_plus = ranks[d > 0].sum()
    n = d.size
    mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    p_ref = 2 * sps.norm.sf(abs(t_plus - mean) / sd)
    res = stats.wilcoxon(a, b)
    assert res["zero_method"] == "wilcox"
    assert res["p_value"] == pytest.approx(p_ref, rel=1e-6)
    # with zero differences 'wilcox' drops them and 'pratt' keeps them: different answers
    x = np.array([3, 4, 5, 2, 4, 5, 3, 3, 4, 5, 1, 2, 5, 4, 4], float)
    y = np.array([3, 3, 4, 2, 5, 4, 3, 1, 4, 3, 2, 2, 4, 3, 4], float)
    assert stats.wilcoxon(x, y, "wilcox")["n_nonzero"] == int(np.count_nonzero(x - y))
    assert stats.wilcoxon(x, y, "wilcox")["p_value"] != stats.wilcoxon(x, y, "pratt")["p_value"]
    assert stats.wilcoxon(x, x)["p_value"] == 1.0
    with pytest.raises(ValueError):
        stats.wilcoxon(x, y, "drop")


def test_sign_test_is_the_exact_binomial():
    w, l, t = 14, 5, 6
    k, n = min(w, l), w + l
    p_ref = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    res = stats.sign_test(w, l, t)
    assert res["ties_mode"] == "exclude" and res["p_value"] == pytest.approx(p_ref, rel=1e-12)
    n2 = w + l + 2 * (t // 2)
    p_split = min(1.0, 2 * sum(math.comb(n2, i) for i in range(l + t // 2 + 1)) / 2 ** n2)
    assert stats.sign_test(w, l, t, "split")["p_value"] == pytest.approx(p_split, rel=1e-12)
    assert stats.win_loss_tie([1, 2, 3, 3], [0, 2, 4, 1]) == (2, 1, 1)


def test_mcnemar_exact_and_chi_square():
    rng = np.random.default_rng(9)
    a = (rng.random(200) < 0.3).astype(float)
    b = a.copy()
    flip = rng.choice(200, size=12, replace=False)
    b[flip] = 1 - b[flip]
    res = stats.mcnemar(a, b)
    n01 = int(((a == 1) & (b == 0)).sum())
    n10 = int(((a == 0) & (b == 1)).sum())
    assert res["exact"] and n01 + n10 == 12
    assert res["p_value"] == pytest.approx(sps.binomtest(n01, n01 + n10, 0.5).pvalue, rel=1e-10)
    b2 = a.copy()
    b2[rng.choice(np.flatnonzero(a == 0), 40, replace=False)] = 1
    b2[rng.choice(np.flatnonzero(a == 1), 5, replace=False)] = 0
    res2 = stats.mcnemar(a, b2)
    assert not res2["exact"]
    assert res2["statistic"] == pytest.approx((abs(40 - 5) - 1) ** 2 / 45)
    assert res2["p_value"] == pytest.approx(sps.chi2.sf((abs(40 - 5) - 1) ** 2 / 45, 1))
    with pytest.raises(ValueError):
        stats.mcnemar([0.5, 1], [1, 0])


def test_permutation_test_agrees_with_scipy():
    a, b = _paired(8, shift=0.6, seed=11)  # 2^8 = 256 <= B: both enumerate exactly
    ours = stats.permutation_test(a, b, B=10_000)
    ref = stats.permutation_test_scipy(a, b, B=10_000)
    assert ours["exact"] and ours["p_value"] == pytest.approx(ref["p_value"], rel=1e-12)
    a, b = _paired(60, shift=0.25, seed=12)  # Monte Carlo: agree within resampling error
    ours = stats.permutation_test(a, b, B=20_000, seed=1)
    ref = stats.permutation_test_scipy(a, b, B=20_000, seed=2)
    assert not ours["exact"]
    assert abs(ours["p_value"] - ref["p_value"]) < 4 * math.sqrt(ref["p_value"] * (1 - ref["p_value"]) / 20_000) + 1e-3


def test_holm_is_the_step_down_procedure():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5, np.nan])
    ok = p[:5]
    order = np.argsort(ok)
    m, running, ref = ok.size, 0.0, np.empty(5)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ok[i]))
        ref[i] = running
    got = stats.holm(p)
    np.testing.assert_allclose(got[:5], ref)
    assert np.isnan(got[5])


def test_effect_sizes():
    a, b = _paired(30, seed=13)
    dz = stats.cohens_dz(a, b)
    assert dz * math.sqrt(30) == pytest.approx(sps.ttest_rel(a, b).statistic, rel=1e-12)
    r = stats.rank_biserial(a, b)
    w = sps.wilcoxon(a - b)  # two-sided statistic = min(T+, T-)
    total = 30 * 31 / 2
    assert abs(r) == pytest.approx(1 - 2 * w.statistic / total, rel=1e-12)
    assert np.sign(r) == np.sign(np.median(a - b)) or abs(r) < 0.1


def test_minimum_detectable_difference():
    from statsmodels.stats.power import TTestPower

    mdd = stats.minimum_detectable_difference(2.0, 1000)
    assert TTestPower().power(effect_size=mdd / 2.0, nobs=1000, alpha=0.05) == pytest.approx(0.8, abs=1e-4)
    normal = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * 2.0 / math.sqrt(1000)
    assert mdd == pytest.approx(normal, rel=0.01)


def test_weighted_kappa_matches_formula():
    rng = np.random.default_rng(21)
    r1 = rng.integers(1, 6, 300)
    r2 = np.clip(r1 + rng.integers(-1, 2, 300), 1, 5)
    k = 5
    obs = np.zeros((k, k))
    for x, y in zip(r1, r2):
        obs[x - 1, y - 1] += 1
    obs /= obs.sum()
    exp = np.outer(obs.sum(1), obs.sum(0))
    w = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)], float)
    ref = 1 - (w * obs).sum() / (w * exp).sum()
    assert stats.weighted_kappa(r1, r2) == pytest.approx(ref, rel=1e-10)


def test_krippendorff_interval_two_raters_matches_formula():
    rng = np.random.default_rng(22)
    a = rng.integers(1, 6, 80).astype(float)
    b = np.clip(a + rng.integers(-1, 2, 80), 1, 5)
    pooled = np.concatenate([a, b])
    n_vals = pooled.size
    within = 2 * ((a - b) ** 2).sum()
    between = sum((x - y) ** 2 for x, y in itertools.permutations(pooled, 2))
    ref = 1 - (n_vals - 1) * within / between
    assert stats.krippendorff_alpha(np.vstack([a, b]), "interval") == pytest.approx(ref, rel=1e-9)
    assert stats.krippendorff_alpha(np.vstack([a, a]), "ordinal") == pytest.approx(1.0)


def test_raw_agreement_and_position_swap():
    j1 = ["A", "B", "tie", "A", "B", "A"]
    j2 = ["A", "A", "tie", "A", "tie", "B"]
    res = stats.raw_agreement(j1, j2, tie="tie")
    assert res["agreement"] == pytest.approx(3 / 6)
    assert res["n_without_ties"] == 4 and res["agreement_without_ties"] == pytest.approx(2 / 4)
    g1 = ["A>B", "A>>B", "A=B", "B>A", "A>B", None]
    g2 = ["B>A", "B>A", "A=B", "B>A", "A>B", "A>B"]
    res = stats.position_swap_consistency(g1, g2)
    # consistent: 1 (mirror exact) and 3; direction-consistent adds 2 (strength differs)
    assert res["n"] == 5 and res["skipped"] == 1
    assert res["consistency"] == pytest.approx(2 / 5)
    assert res["direction_consistency"] == pytest.approx(3 / 5)


def test_rank_correlation():
    ours = {"m1": 10.0, "m2": 20.0, "m3": 15.0, "m4": 40.0, "m5": 33.0}
    pub = {"m1": 12.0, "m2": 18.0, "m3": 25.0, "m4": 39.0, "m5": 30.0, "other": 1.0}
    res = stats.rank_correlation(ours, pub, B=200)
    models = sorted(ours)
    assert res["n_models"] == 5
    assert res["spearman"] == pytest.approx(sps.spearmanr([ours[m] for m in models], [pub[m] for m in models]).statistic)
    assert res["spearman_ci"][0] <= res["spearman"] <= res["spearman_ci"][1]
    with pytest.raises(ValueError):
        stats.rank_correlation({"a": 1, "b": 2}, {"a": 1, "b": 2})


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        stats.paired_bootstrap([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_t([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        stats.paired_bootstrap([], [])


def test_batched_mean_cis_equal_single_column_ones():
    x = np.random.default_rng(8).normal(size=(120, 3))
    batched = stats.bootstrap_mean_cis(x, B=1500, seed=4)
    for k in range(3):
        single = stats.bootstrap_mean_ci(x[:, k], B=1500, seed=4)
        for f in ("mean", "lower", "upper", "se", "n"):
            assert batched[k][f] == pytest.approx(single[f], rel=1e-12)


def test_batched_resampling_tests_equal_single_ones():
    a, b = _paired(70, seed=30)
    c, d = _paired(70, shift=-0.1, seed=31)
    diffs = np.stack([a - b, c - d], axis=1)
    boots = stats.paired_bootstrap_columns(diffs, B=3000, seed=2)
    perms = stats.permutation_test_columns(diffs, B=3000, seed=2)
    for k, (x, y) in enumerate(((a, b), (c, d))):
        assert boots[k] == pytest.approx(stats.paired_bootstrap(x, y, B=3000, seed=2))
        assert perms[k] == pytest.approx(stats.permutation_test(x, y, B=3000, seed=2))
