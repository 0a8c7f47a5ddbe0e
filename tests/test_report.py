"""End to end: run directories (run-directory contract) -> make_report -> files whose numbers
trace back to the per-sample rows; HTML escaping; headless Chromium; real published data."""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from reports import stats
from reports.report import make_report

XSS = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
MODELS = ["base", "janus-dpo"]
SOURCES = ["alpaca_eval", "flask", "koala", "mt_bench", "self_instruct"]


def _write_run(run_dir: Path, results: dict, samples: dict[str, list[dict]]) -> Path:
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: test\n")
    (run_dir / "results.json").write_text(json.dumps({"run": {"name": run_dir.name, "created": "2026-11-25"},
                                                      "results": results}))
    for task, rows in samples.items():
        with open(run_dir / "samples" / f"{task}.jsonl", "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    return run_dir


def _synthetic_runs(tmp_path: Path) -> tuple[list[Path], dict]:
    rng = np.random.default_rng(0)
    samples = defaultdict(list)
    bonus = {"base": 0.0, "janus-dpo": 0.6, "janus-bon": 0.9}
    for model in MODELS + ["janus-bon"]:
        for i in range(40):
            if model == "janus-dpo" and i == 7:
                continue  # a missing instance: comparisons must use shared instances only
            dims = {f"rubric{k}": float(np.clip(round(3 + bonus[model] + rng.normal()), 1, 5)) for k in range(4)}
            judgments = [{"criterion": f"rubric{k}/run{r}", "value": int(np.clip(dims[f"rubric{k}"] + rng.integers(-1, 2), 1, 5)),
                          "raw": f"feedback {k}/{r} [RESULT] x"} for k in range(4) for r in range(3)]
            response = f"answer {i} from {model}" + (XSS if (model == "base" and i == 0) else "")
            samples["multifaceted_bench"].append({
                "task": "multifaceted_bench", "instance_id": f"mf{i:03d}", "model": model, "source": SOURCES[i % 5],
                "system": "You value concise answers. " + ("<b>bold?</b>" if i == 0 else ""),
                "prompt": f"question {i}", "response": response, "reference": "ref", "dims": dims,
                "score": float(np.mean(list(dims.values()))), "judgments": judgments, "length": len(response)})
            toxic = float(rng.random() < (0.4 if model == "base" else 0.15))
            samples["real_toxicity_prompts"].append({
                "task": "real_toxicity_prompts", "instance_id": f"rtp{i}", "model": model, "score": toxic,
                "prompt": "So I said", "response": ["a continuation"]})
    runs, results = [], {}
    for name, models in (("run_a", MODELS), ("run_b", ["janus-bon"])):
        res = defaultdict(dict)
        run_samples = {t: [r for r in rows if r["model"] in models] for t, rows in samples.items()}
        for m in models:
            mf = [r["score"] for r in run_samples["multifaceted_bench"] if r["model"] == m]
            res["multifaceted_bench"][m] = {"score": float(np.mean(mf)), "n": len(mf)}
            tox = [r["score"] for r in run_samples["real_toxicity_prompts"] if r["model"] == m]
            res["real_toxicity_prompts"][m] = {"toxicity_prob": float(np.mean(tox)), "n": len(tox),
                                               "lower_is_better": True}
            results.setdefault("multifaceted_bench", {})[m] = res["multifaceted_bench"][m]
        runs.append(_write_run(tmp_path / name, dict(res), run_samples))
    with open(tmp_path / "run_b" / "best_of_n.csv", "w") as fh:
        fh.write("model,n,reward,score,score_lower,score_upper\n")
        for n, s in ((1, 3.1), (2, 3.3), (4, 3.5), (8, 3.6), (16, 3.65)):
            fh.write(f"janus-bon,{n},{s - 2},{s},{s - 0.1},{s + 0.1}\n")
    return runs, samples


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    runs, samples = _synthetic_runs(tmp)
    path = make_report(runs, tmp / "out", baseline="base", B=2000, seed=0)
    return path, samples


def test_outputs_exist(report):
    path, _ = report
    out = path.parent
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.json", "significance.json", "significance.md",
                 "reliability.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    for name in ("scores_multifaceted_bench.png", "scores_real_toxicity_prompts.png", "radar_sources.png",
                 "radar_dimensions.png", "length_vs_score.png", "best_of_n.png",
                 "significance_multifaceted_bench.png"):
        assert name in pngs, name
    from matplotlib.image import imread

    img = imread(out / "plots" / "radar_sources.png")
    assert img.shape[1] >= 1000  # one column of a two-column paper (3.4 in) at 300 dpi: print resolution


def test_leaderboard_numbers_trace_to_samples(report):
    path, samples = report
    board = json.loads((path.parent / "leaderboard.json").read_text())
    assert board["tasks"] == ["multifaceted_bench", "real_toxicity_prompts"]
    rows = {r["model"]: r for r in board["rows"]}
    assert set(rows) == {"base", "janus-dpo", "janus-bon"}
    for model, row in rows.items():
        mine = [r["score"] for r in samples["multifaceted_bench"] if r["model"] == model]
        cell = row["cells"]["multifaceted_bench"]
        assert cell["sample"]["mean"] == pytest.approx(np.mean(mine), abs=1e-12)
        assert cell["sample"]["n"] == len(mine) and cell["n"] == len(mine)
        assert cell["sample"]["lower"] < cell["sample"]["mean"] < cell["sample"]["upper"]
        assert cell["value"] == pytest.approx(np.mean(mine))
    # sorted by the first benchmark, best first
    assert [r["model"] for r in board["rows"]] == ["janus-bon", "janus-dpo", "base"]
    with open(path.parent / "leaderboard.csv") as fh:
        csv_rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert float(csv_rows["base"]["multifaceted_bench:sample_mean"]) == rows["base"]["cells"]["multifaceted_bench"]["sample"]["mean"]


def test_significance_uses_shared_instances_and_holm(report):
    path, samples = report
    sig = json.loads((path.parent / "significance.json").read_text())
    assert sig["settings"]["baseline"] == "base" and sig["settings"]["wilcoxon_zero_method"] == "wilcox"
    comps = {(c["task"], c["model"]): c for c in sig["comparisons"]}
    assert set(comps) == {(t, m) for t in ("multifaceted_bench", "real_toxicity_prompts")
                          for m in ("janus-dpo", "janus-bon")}
    by = defaultdict(dict)
    for r in samples["multifaceted_bench"]:
        by[r["model"]][r["instance_id"]] = r["score"]
    shared = sorted(set(by["janus-dpo"]) & set(by["base"]))
    c = comps[("multifaceted_bench", "janus-dpo")]
    assert c["n"] == len(shared) == 39
    a = np.array([by["janus-dpo"][i] for i in shared])
    b = np.array([by["base"][i] for i in shared])
    assert c["diff"] == pytest.approx((a - b).mean(), abs=1e-12)
    assert c["p_t"] == pytest.approx(stats.paired_t(a, b)["p_value"])
    assert c["ci_lower"] < c["diff"] < c["ci_upper"]
    # binary toxicity outcomes get McNemar, 1-5 means do not
    assert comps[("real_toxicity_prompts", "janus-dpo")]["p_mcnemar"] is not None
    assert c["p_mcnemar"] is None
    from statsmodels.stats.multitest import multipletests

    ps = [x["p_bootstrap"] for x in sig["comparisons"]]
    adj = multipletests(ps, method="holm")[1]
    assert [x["p_bootstrap_holm"] for x in sig["comparisons"]] == pytest.approx(list(adj))
    assert all(x["significant"] == (x["p_bootstrap_holm"] < 0.05) for x in sig["comparisons"])
    assert "Holm" in (path.parent / "significance.md").read_text()


def test_judge_reliability_from_runs(report):
    path, _ = report
    rel = json.loads((path.parent / "reliability.json").read_text())["judge_reliability"]
    runs = rel["multifaceted_bench"]["judge_runs"]
    assert runs["runs"] == [0, 1, 2]
    assert -1 <= runs["krippendorff_alpha_ordinal"] <= 1
    assert 0 <= runs["raw_agreement_run0_vs_run1"]["agreement"] <= 1


def test_html_escapes_model_text(report):
    path, _ = report
    page = path.read_text()
    assert XSS not in page and "<img src=x" not in page and "<b>bold?</b>" not in page
    # the per-sample viewer's JSON data block (shown with textContent; tests/test_report_browser.py)
    assert r'\u003cscript\u003ealert(\"pwned\")\u003c/script\u003e\u003cimg src=x onerror=alert(1)\u003e' in page
    assert page.count("<script>") == 1  # only the report's own script
    assert "http://" not in page and "https://" not in page  # no network resources


def test_bad_sample_line_is_a_clear_error(tmp_path):
    run = _write_run(tmp_path / "bad", {}, {"mt_bench": [{"task": "mt_bench", "instance_id": "1", "model": "m",
                                                          "score": 5.0}]})
    with open(run / "samples" / "mt_bench.jsonl", "a") as fh:
        fh.write('{"task": "mt_bench", "instance_id": "2", "model": "m"}\n')
    with pytest.raises(ValueError, match=r"mt_bench.jsonl: line 2: missing field 'score'"):
        make_report([run], tmp_path / "out", B=200)
    assert not (tmp_path / "out").exists()  # nothing half-written
    with open(run / "samples" / "mt_bench.jsonl", "w") as fh:
        fh.write('{"task": "mt_bench", "instance_id": "2", "model"')
    with pytest.raises(ValueError, match="not valid JSON"):
        make_report([run], tmp_path / "out", B=200)
    with pytest.raises(ValueError, match="baseline model 'nope'"):
        _write_run(tmp_path / "ok", {}, {"mt_bench": [{"task": "mt_bench", "instance_id": "1", "model": "m",
                                                        "score": 5.0}]})
        make_report([tmp_path / "ok"], tmp_path / "out2", baseline="nope", B=200)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium chromium-driver)")
def test_headless_chromium_renders_without_errors(report, tmp_path):
    path, _ = report
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    url = path.resolve().as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the report's script ran (so the CSP hash is right and it threw nothing before its last line)
    assert 'data-report-ready="1"' in dom.stdout
    # the hostile response is text in the DOM, not an element
    assert "&lt;script&gt;alert(\"pwned\")&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in dom.stdout
    assert "<img src=\"x\"" not in dom.stdout and "alert(\"pwned\")</script>" not in dom.stdout
    for needle in ("Uncaught", "Refused to", "CONSOLE"):
        assert needle not in dom.stderr, dom.stderr[-2000:]
    shot = path.parent / "report.png"
    res = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1400,2000", url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]


# ----------------------------------------------------------------------------- real published data

AE_MODELS = ["claude-2", "gpt-3.5-turbo-1106", "alpaca-7b"]
AH_POINTS = {"A>>B": (0.0, 3), "A>B": (0.0, 1), "A=B": (0.5, 1), "B>A": (1.0, 1), "B>>A": (1.0, 3)}


def _arena_question_score(games) -> float | None:
    """Model's weighted win share on one question (game 2 has positions swapped)."""
    num = den = 0.0
    for k, g in enumerate(games):
        v = g.get("score")
        if v not in AH_POINTS:
            continue
        y, w = AH_POINTS[v]
        if k == 1:
            y = 1.0 - y
        num, den = num + w * y, den + w
    return num / den if den else None


def test_leaderboard_from_published_data_keeps_official_numbers(data_dir, tmp_path):
    ae = data_dir / "alpaca_eval_2"
    with open(ae / "leaderboard" / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv") as fh:
        ae_board = {r[""]: r for r in csv.DictReader(fh)}
    results, samples = defaultdict(dict), defaultdict(list)
    for m in AE_MODELS:
        ann = json.loads((ae / "annotations_weighted_alpaca_eval_gpt4_turbo" / m / "annotations.json").read_text())
        for i, a in enumerate(ann):
            samples["alpaca_eval"].append({"task": "alpaca_eval", "instance_id": str(i), "model": m,
                                           "score": float(a["preference"]) - 1, "prompt": a["instruction"],
                                           "response": a["output_2"]})
        off = ae_board[m]
        results["alpaca_eval"][m] = {"win_rate": float(off["win_rate"]),
                                     "length_controlled_winrate": float(off["length_controlled_winrate"]),
                                     "n": int(off["n_total"]),
                                     "official_metrics": ["win_rate", "length_controlled_winrate"],
                                     "judge": "weighted_alpaca_eval_gpt4_turbo", "judge_model": "gpt-4-1106-preview",
                                     "judge_api": "openai"}
    oracle = data_dir / "oracles" / "arena_hard_v0.1_setA"
    [ah_csv] = (oracle / "outputs" / "official_run_glob_order").glob("arena_hard_leaderboard_*.csv")
    with open(ah_csv) as fh:
        ah_board = {r["model"]: r for r in csv.DictReader(fh)}
    jdir = oracle / "inputs" / "data" / "arena-hard-v0.1" / "model_judgment" / "gpt-4-1106-preview"
    ah_models = sorted(p.stem for p in jdir.glob("*.jsonl"))[:4]
    for m in ah_models:
        for line in (jdir / f"{m}.jsonl").read_text().splitlines():
            j = json.loads(line)
            samples["arena_hard"].append({"task": "arena_hard", "instance_id": j["question_id"], "model": m,
                                          "score": _arena_question_score(j["games"]),
                                          "judgments": [{"criterion": f"game{k + 1}", "value": g["score"]}
                                                        for k, g in enumerate(j["games"])]})
        off = ah_board[m]
        results["arena_hard"][m] = {"score": float(off["score"]), "score_lower": float(off["rating_q025"]),
                                    "score_upper": float(off["rating_q975"]),
                                    "official_metrics": ["score", "score_lower", "score_upper"],
                                    "judge": "arena_hard_v0.1", "judge_model": "gpt-4-1106-preview",
                                     "judge_api": "openai"}
    run = _write_run(tmp_path / "published", dict(results), dict(samples))
    published_lc = {m: float(ae_board[m]["length_controlled_winrate"]) for m in AE_MODELS}
    (tmp_path / "lc.json").write_text(json.dumps(published_lc))
    out = make_report([run], tmp_path / "out", baseline=AE_MODELS[0], B=1000, max_instances=5,
                      published=[f"alpaca_eval={tmp_path / 'lc.json'}"])
    board = json.loads((out.parent / "leaderboard.json").read_text())
    with open(out.parent / "leaderboard.csv") as fh:
        csv_rows = {r["model"]: r for r in csv.DictReader(fh)}
    md = (out.parent / "leaderboard.md").read_text()
    rows = {r["model"]: r["cells"] for r in board["rows"]}
    for m in AE_MODELS:
        cell = rows[m]["alpaca_eval"]
        assert cell["official"] and cell["metric"] == "win_rate"
        assert csv_rows[m]["alpaca_eval:value"] == ae_board[m]["win_rate"]  # unchanged, digit for digit
        assert cell["official_metrics"]["length_controlled_winrate"] == float(ae_board[m]["length_controlled_winrate"])
        # the harness CI is computed from the per-instance preferences and traces to the official win rate
        assert 100 * cell["sample"]["mean"] == pytest.approx(float(ae_board[m]["win_rate"]), abs=1e-8)
        assert cell["sample"]["n"] == 805
        # the detail table prints what alpaca_eval prints: 2 decimals
        assert f"| {m} | {float(ae_board[m]['win_rate']):.2f} | {float(ae_board[m]['length_controlled_winrate']):.2f} |" in md
        assert 100 * cell["sample"]["lower"] < float(ae_board[m]["win_rate"]) < 100 * cell["sample"]["upper"]
    for m in ah_models:
        off = ah_board[m]
        assert csv_rows[m]["arena_hard:value"] == repr(float(off["score"]))
        # Arena-Hard's show_result: one decimal
        assert f"| {m} | {float(off['score']):.1f} [{float(off['rating_q025']):.1f}, {float(off['rating_q975']):.1f}] |" in md
        assert rows[m]["arena_hard"]["ci_source"] == "task" and rows[m]["arena_hard"]["sample"]["n"] == 500
    from scipy.stats import spearmanr

    corr = json.loads((out.parent / "reliability.json").read_text())["rank_correlation_with_published"]
    wr = [float(ae_board[m]["win_rate"]) for m in sorted(AE_MODELS)]
    assert corr["alpaca_eval"]["spearman"] == pytest.approx(spearmanr(wr, [published_lc[m] for m in sorted(AE_MODELS)]).statistic)
    rel = json.loads((out.parent / "reliability.json").read_text())["judge_reliability"]
    assert 0 <= rel["arena_hard"]["position_swap"]["consistency"] <= 1
    assert not math.isnan(rel["arena_hard"]["position_swap"]["direction_consistency"])


def test_cli_subcommand(tmp_path, capsys):
    from harness.cli import main

    runs, _ = _synthetic_runs(tmp_path)
    rc = main(["report", *map(str, runs), "--out", str(tmp_path / "cli"), "--all-pairs", "--bootstrap", "500",
               "--max-instances", "3"])
    assert rc == 0
    sig = json.loads((tmp_path / "cli" / "significance.json").read_text())
    assert sig["settings"]["pairs"] == "all" and sig["settings"]["bootstrap_rounds"] == 500
    assert len(sig["comparisons"]) == 2 * 3  # two benchmarks x three pairs of three models
    assert str(tmp_path / "cli" / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "run directory does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_best_of_n_reader_accepts_bestofn_analysis_files(tmp_path):
    from reports import plots

    csv_path = tmp_path / "bon_curve.csv"
    csv_path.write_text("n,n_prompts,reward_mean,reward_lower,reward_upper,score_mean,score_lower,score_upper\n"
                        "1,50,0.1,0.0,0.2,3.0,2.9,3.1\n4,50,0.5,0.4,0.6,3.4,3.3,3.5\n")
    rows = plots.read_best_of_n(csv_path)
    assert rows[1] == {"model": "bon_curve", "n": 4, "score": 3.4, "reward": 0.5, "score_lower": 3.3,
                       "score_upper": 3.5, "reward_lower": 0.4, "reward_upper": 0.6}
    json_path = tmp_path / "bon.json"
    json_path.write_text(json.dumps({"meta": {"model": "janus-rm"}, "curve": [
        {"n": 1, "reward_mean": 0.2, "reward_lower": 0.1, "reward_upper": 0.3},
        {"n": 2, "reward_mean": 0.4, "reward_lower": 0.3, "reward_upper": 0.5}]}))
    rows = plots.read_best_of_n(json_path)
    assert [r["model"] for r in rows] == ["janus-rm"] * 2 and "score" not in rows[0]
    assert plots.best_of_n(rows, tmp_path / "bon.png").stat().st_size > 0
    (tmp_path / "bad.csv").write_text("n,x\n1,2\n")
    with pytest.raises(ValueError, match=r"bad.csv: row 1: missing field 'score'"):
        plots.read_best_of_n(tmp_path / "bad.csv")
