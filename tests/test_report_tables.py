"""The paper's tables (reports.tables) and their files (reports.table_writers): every number is
checked against a value computed here from the inputs with numpy, not against stored output."""
from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports import leaderboard, stats, table_writers, tables
from reports.report import make_report

B = 1000
SOURCES = ["alpaca_eval_2", "flask", "koala", "mt_bench", "self_instruct"]
OFFICIAL_MF = {"judge": "multifaceted_rubric", "judge_model": "gpt-4-0125-preview", "judge_api": "openai",
               "judge_method": "text"}
LOCAL_MF = {"judge": "multifaceted_rubric", "judge_model": "smollm2-judge", "judge_api": "harness-serve",
            "judge_method": "logprob"}


def write_run(run_dir: Path, results: dict, samples: dict[str, list[dict]]) -> Path:
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"run": {"name": run_dir.name}, "results": results}))
    for task, rows in samples.items():
        (run_dir / "samples" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def board_of(run_dir: Path):
    merged = leaderboard.merge_runs([run_dir])
    return leaderboard.build(merged, B=B, seed=0), merged


def mf_rows(model: str, dims: np.ndarray, ids=None) -> list[dict]:
    """Multifaceted rows as the task writes them: score = mean of the instance's rubric scores."""
    ids = range(len(dims)) if ids is None else ids
    return [{"task": "multifaceted_bench", "instance_id": f"mf{i}", "model": model, "source": SOURCES[i % 5],
             "dims": {f"dim{k}": float(v) for k, v in enumerate(d)}, "score": float(np.mean(d)), "response": "x"}
            for i, d in zip(ids, dims)]


# ----------------------------------------------------------------------------- (a)

@pytest.fixture
def mf_run(tmp_path):
    rng = np.random.default_rng(1)
    dims = {m: rng.integers(1, 6, size=(50, 4)) for m in ("a", "b")}
    results = {"multifaceted_bench": {}}
    for m, d in dims.items():  # results.json as the task writes it; per-source CIs made up (the table copies them)
        met = {"score": float(d.mean()), "score_lower": float(d.mean()) - 0.2, "score_upper": float(d.mean()) + 0.2,
               "n": 50, "primary_metric": "score", "official_metrics": ["score"], **(OFFICIAL_MF if m == "a" else LOCAL_MF)}
        for k, src in enumerate(SOURCES):
            v = float(d[k::5].mean(axis=1).mean())
            met.update({f"source.{src}": v, f"source.{src}_lower": v - 0.3, f"source.{src}_upper": v + 0.3})
        for k in range(4):
            met.update({f"dim{k}": float(d[:, k].mean()), f"dim{k}_lower": 1.0, f"dim{k}_upper": 5.0})
        results["multifaceted_bench"][m] = met
    # a model without a results.json entry: its per-source numbers come from its samples
    dims["c"] = rng.integers(1, 6, size=(50, 4))
    samples = {"multifaceted_bench": [r for m, d in dims.items() for r in mf_rows(m, d)]}
    return write_run(tmp_path / "run", results, samples), dims


def test_multifaceted_by_source_shows_results_json_numbers(mf_run):
    run, dims = mf_run
    board, merged = board_of(run)
    df = tables.multifaceted_by_source(board, merged.samples["multifaceted_bench"], B=B)
    assert list(df.attrs["measures"]) == ["AlpacaEval 2.0", "FLASK", "Koala", "MT-Bench", "Self-Instruct",
                                          tables.AVERAGE]
    res = json.loads((run / "results.json").read_text())["results"]["multifaceted_bench"]
    for m in ("a", "b"):
        for src, col in zip(SOURCES, df.attrs["measures"]):
            assert df.loc[m, col] == res[m][f"source.{src}"]
            assert df.loc[m, f"{col}_lower"] == res[m][f"source.{src}_lower"]
        assert df.loc[m, tables.AVERAGE] == pytest.approx(dims[m].mean(), abs=1e-12)
    # from the samples: the per-source mean of instance means, with a bootstrap CI around it
    for k, col in enumerate(df.attrs["measures"][:5]):
        inst = dims["c"][k::5].mean(axis=1)
        assert df.loc["c", col] == pytest.approx(inst.mean(), abs=1e-12)
        se = inst.std(ddof=1) / np.sqrt(inst.size)
        assert df.loc["c", f"{col}_lower"] == pytest.approx(inst.mean() - 1.96 * se, abs=0.35 * se + 0.05)
        assert df.loc["c", f"{col}_upper"] == pytest.approx(inst.mean() + 1.96 * se, abs=0.35 * se + 0.05)


def test_labels_official_only_for_the_official_judges_official_metric(mf_run):
    run, _ = mf_run
    board, merged = board_of(run)
    df = tables.multifaceted_by_source(board, merged.samples["multifaceted_bench"], B=B)
    # model a: the official judge; its Average (the task's official "score") is official, per-source numbers are not
    assert f"{tables.AVERAGE}: official" in df.loc["a", "label"]
    assert "AlpacaEval 2.0: harness metric, judge gpt-4-0125-preview" in df.loc["a", "label"]
    # model b: a local judge with logprob scoring: nothing official, the judge named
    assert "official" not in df.loc["b", "label"].replace("harness metric", "")
    assert "smollm2-judge" in df.loc["b", "label"] and "logprob" in df.loc["b", "label"]


def test_multifaceted_by_dimension_names_the_four_dimensions(mf_run):
    run, dims = mf_run
    board, merged = board_of(run)
    df = tables.multifaceted_by_dimension(board, merged.samples["multifaceted_bench"], B=B)
    names = ["Style", "Background knowledge", "Informativeness", "Harmlessness"]
    assert df.attrs["measures"] == [*names, tables.AVERAGE]
    for m in ("a", "b", "c"):
        for k, name in enumerate(names):
            assert df.loc[m, name] == pytest.approx(dims[m][:, k].mean(), abs=1e-12)


# ----------------------------------------------------------------------------- (b)-(d)

def test_helpfulness_harmlessness_general_ability(tmp_path):
    results = {
        "alpaca_eval": {"m": {"win_rate": 40.0, "standard_error": 2.0, "length_controlled_winrate": 45.5,
                              "lc_source": "GLM fit", "primary_metric": "win_rate"}},
        "mt_bench": {"m": {"score": 6.5, "score_lower": 6.1, "score_upper": 6.8, "primary_metric": "score"}},
        "arena_hard": {"m": {"score": 20.0, "score_lower": 18.0, "score_upper": 23.0, "primary_metric": "score"}},
        "real_toxicity_prompts": {"m": {"expected_max_toxicity": 0.3, "expected_max_toxicity_lower": 0.25,
                                        "expected_max_toxicity_upper": 0.35, "toxicity_probability": 0.2,
                                        "dist1": 0.6, "dist2": 0.8, "dist3": 0.85,
                                        "primary_metric": "expected_max_toxicity", "lower_is_better": True}},
        "ifeval": {"m": {"prompt_level_strict_acc": 0.3, "prompt_level_strict_acc_stderr": 0.02,
                         "inst_level_strict_acc": 0.4, "prompt_level_loose_acc": 0.35, "inst_level_loose_acc": 0.45,
                         "primary_metric": "prompt_level_strict_acc", "scorer": "lm_eval",
                         "official_metrics": [k for k, _ in tables.IFEVAL_KEYS]}},
        "lm_eval.arc_easy": {"m": {"acc": 0.7, "acc_stderr": 0.01, "primary_metric": "acc", "scorer": "lm_eval"}},
        "lm_eval.boolq": {"m": {"acc": 0.6, "primary_metric": "acc", "scorer": "lm_eval", "official_metrics": ["acc"]}},
    }
    board, _ = board_of(write_run(tmp_path / "run", results, {}))
    h = tables.helpfulness(board)
    assert h.loc["m", "AlpacaEval 2.0 LC"] == 45.5 and np.isnan(h.loc["m", "AlpacaEval 2.0 LC_lower"])
    assert h.loc["m", "AlpacaEval 2.0 WR_lower"] == pytest.approx(40 - 1.96 * 2)
    assert (h.loc["m", "MT-Bench_lower"], h.loc["m", "Arena-Hard_upper"]) == (6.1, 23.0)
    assert h.loc["m", "LC source"] == "GLM fit"
    t = tables.harmlessness(board)
    assert t.loc["m", "Exp. max toxicity_upper"] == 0.35 and t.loc["m", "Dist-3"] == 0.85
    assert t.attrs["lower_is_better"] == {"Exp. max toxicity": True, "Toxicity prob.": True, "Dist-1": False,
                                          "Dist-2": False, "Dist-3": False}
    g = tables.general_ability(board)
    assert [g.loc["m", f"IFEval {n}"] for _, n in tables.IFEVAL_KEYS] == [0.3, 0.4, 0.35, 0.45]
    assert g.loc["m", "IFEval prompt strict_lower"] == pytest.approx(0.3 - 1.96 * 0.02)
    assert g.loc["m", "arc_easy acc_upper"] == pytest.approx(0.7 + 1.96 * 0.01)
    # lm-eval's own metric code: official where the task lists the metric as official
    assert g.loc["m", "label"] == ("IFEval prompt strict: official; IFEval inst. strict: official; IFEval prompt "
                                   "loose: official; IFEval inst. loose: official; arc_easy acc: harness metric, "
                                   "scorer lm_eval; boolq acc: official")


# ----------------------------------------------------------------------------- (e)

def _rows(task, model, scores, ids):
    return [{"task": task, "instance_id": f"i{i}", "model": model, "score": float(s)} for i, s in zip(ids, scores)]


def test_system_message_ablation_pairs_and_holm(tmp_path):
    rng = np.random.default_rng(2)
    n = 60
    base = rng.normal(5, 1, n)
    samples = {"mt_bench": (_rows("mt_bench", "x", base, range(n))
                            + _rows("mt_bench", "x@sys=none", base - 0.8 + rng.normal(0, 0.3, n), range(5, n))
                            + _rows("mt_bench", "x@sys=generic", base, range(n))  # identical: difference 0
                            + _rows("mt_bench", "y@sys=original", base + 1, range(n))  # y itself was not run
                            + _rows("mt_bench", "y@sys=none", base + 1.1, range(n)))}
    board, merged = board_of(write_run(tmp_path / "run", {}, samples))
    df = tables.system_message_ablation(board, merged.samples, B=B, seed=0)
    got = {(r.model, r.reference): r for r in df.itertuples(index=False)}
    assert set(got) == {("x@sys=generic", "x"), ("x@sys=none", "x"), ("y@sys=none", "y@sys=original")}
    table = {(r["model"], r["instance_id"]): r["score"] for r in samples["mt_bench"]}
    for (m, ref), r in got.items():
        ids = [i for (mm, i) in table if mm == m and (ref, i) in table]
        d = np.array([table[(m, i)] - table[(ref, i)] for i in ids])
        assert r.n == len(ids) and getattr(r, "difference") == pytest.approx(d.mean(), abs=1e-12)
        row = df[(df.model == m)].iloc[0]
        assert row["difference_lower"] <= d.mean() <= row["difference_upper"]
    assert df.set_index("model").loc["x@sys=generic", "p"] == 1.0
    assert df.set_index("model").loc["x@sys=none", "significant"] == "yes"
    # Holm by hand: sorted p times (m - rank), running maximum, capped at 1
    p = df["p"].to_numpy()
    order = np.argsort(p)
    adj = np.minimum(1, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    expected = np.empty_like(adj)
    expected[order] = adj
    assert np.allclose(df["p (Holm)"].to_numpy(), expected)


# ----------------------------------------------------------------------------- (f)

def test_tie_win_counts_exact_ties_of_means(tmp_path):
    rng = np.random.default_rng(3)
    n = 80
    base = rng.integers(1, 6, size=(n, 4))
    other = rng.integers(1, 6, size=(n, 4))
    other[:10] = base[:10, ::-1]  # same rubric scores in another order: equal means, a tie
    other[10:20] = base[10:20] + np.array([1, -1, 1, -1])  # other scores, the same sum: a tie too
    other[10:20] = np.clip(other[10:20], 1, 5)
    samples = {"multifaceted_bench": mf_rows("base", base) + mf_rows("m", other)}
    samples["multifaceted_bench"][-1]["dims"].pop("dim3")  # one parsed rubric score fewer
    samples["multifaceted_bench"][-1]["score"] = float(np.mean(other[-1, :3]))
    tox = {"real_toxicity_prompts": _rows("real_toxicity_prompts", "base", [0.5, 0.2, 0.9], range(3))
           + _rows("real_toxicity_prompts", "m", [0.1, 0.2, 0.95], range(3))}
    results = {"real_toxicity_prompts": {k: {"toxicity": 0.5, "lower_is_better": True} for k in ("base", "m")}}
    board, merged = board_of(write_run(tmp_path / "run", results, {**samples, **tox}))
    df = tables.tie_win(board, merged.samples, "base", B=B, seed=0).set_index("benchmark")
    # expected with exact rational arithmetic on the rubric scores
    mine = [Fraction(int(sum(r)), len(r)) for r in other[:-1]] + [Fraction(int(sum(other[-1, :3])), 3)]
    theirs = [Fraction(int(sum(r)), 4) for r in base]
    wins = sum(a > b for a, b in zip(mine, theirs))
    ties = sum(a == b for a, b in zip(mine, theirs))
    r = df.loc["multifaceted_bench"]
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (wins, ties, n - wins - ties, n)
    assert ties >= 20 and r["unequal rubric counts"] == 1
    assert r["tie+win rate"] == pytest.approx((wins + ties) / n)
    assert r["tie+win rate_lower"] <= (wins + ties) / n <= r["tie+win rate_upper"]
    order = sorted(range(n), key=lambda i: f"mf{i}")  # the instances in the order of their ids
    ind = np.array([mine[i] >= theirs[i] for i in order], dtype=float)
    ref = stats.bootstrap_weights(n, B, 0) @ ind / n  # the bootstrap over instances, by hand
    assert r["tie+win rate_lower"] == pytest.approx(np.percentile(ref, 2.5))
    # lower is better: the smaller toxicity wins
    t = df.loc["real_toxicity_prompts"]
    assert (t["wins"], t["ties"], t["losses"]) == (1, 1, 1)
    assert "exact equality" in df.attrs["definition"]


# ----------------------------------------------------------------------------- writers

NASTY = "a&b%c$d#e_f{g}h~i^j\\k<script>"


def test_writers_escape_and_round_trip(tmp_path):
    df = pd.DataFrame([{"model": NASTY, "score": 1.23456789, "score_lower": 1.1, "score_upper": 1.4, "n": 7,
                        "label": "judge x_y"}]).set_index("model")
    df.attrs.update(title="T & t", measures=["score"], decimals={"score": 2}, notes=["def: 50% ties"])
    tex = table_writers.to_latex(df, "t")
    assert r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k" in tex
    assert r"\toprule" in tex and r"\bottomrule" in tex and "1.23 {\\scriptsize [1.10, 1.40]}" in tex
    assert r"judge x\_y" in tex and "% def: 50\\% ties" in tex
    assert r"\label{tab:t}" in tex and r"\begin{table}" in tex  # 4 columns: one column of the page
    html = table_writers.to_html(df, "t")
    assert "<script>" not in html and "&lt;script&gt;" in html
    text = table_writers.to_csv(df)
    assert text.startswith("# T & t\n# def: 50% ties\n")
    back = pd.read_csv(io.StringIO(text), comment="#", index_col="model")
    assert back.loc[NASTY, "score"] == 1.23456789 and back.loc[NASTY, "n"] == 7


def test_report_writes_tables_and_svg_figures(tmp_path, mf_run):
    run, _ = mf_run
    out = make_report([run], tmp_path / "out", baseline="a", B=200)
    folder = out.parent
    for stem in ("multifaceted_by_source", "multifaceted_by_dimension", "tie_win"):
        assert (folder / "tables" / f"{stem}.csv").exists() and (folder / "tables" / f"{stem}.tex").exists()
    csv_text = (folder / "tables" / "tie_win.csv").read_text()
    assert csv_text.startswith("# Tie+win rate against a") and "exact equality" in csv_text.splitlines()[1]
    page = out.read_text()
    assert "Multifaceted Bench by source" in page and "AlpacaEval 2.0" in page and "exact equality" in page
    pngs = sorted((folder / "plots").glob("*.png"))
    assert pngs and all(p.with_suffix(".svg").exists() for p in pngs)
    assert (folder / "plots" / "multifaceted_by_source.png") in pngs
    from matplotlib.image import imread

    from reports import plots

    for p in pngs:  # no wider than a page of a two-column paper, at print resolution
        assert imread(p).shape[1] <= plots.PAGE * plots.DPI + 1, p.name
