"""Multifaceted metrics: means per model/source/dimension, bootstrap CIs, pairwise tie+win."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.records import Completion, Judgment
from reports.multifaceted_metrics import RubricScore, bootstrap_ci, pairwise, rows_from_judgments, summarize
from tasks.multifaceted.task import MultifacetedBench

EXAMPLE = Path(__file__).resolve().parents[1] / "tasks" / "multifaceted" / "readme_example.json"


def _random_rows(seed=0, n_inst=30, models=("a", "b"), runs=3, fail_every=17):
    rng = random.Random(seed)
    rows, k = [], 0
    for m in models:
        for i in range(n_inst):
            src = ["koala", "flask", "mt_bench"][i % 3]
            for d in range(4):
                for r in range(runs):
                    k += 1
                    value = None if k % fail_every == 0 else float(rng.randint(1, 5))
                    rows.append(RubricScore(m, f"i{i}", src, d, r, value))
    return rows


def test_means_match_an_independent_groupby():
    rows = _random_rows()
    out = summarize(rows, n_boot=200, seed=1)
    df = pd.DataFrame([r.__dict__ for r in rows]).dropna(subset=["value"])
    per_rubric = df.groupby(["model", "instance_id", "source", "rubric_index"])["value"].mean().reset_index()
    per_inst = per_rubric.groupby(["model", "instance_id", "source"])["value"].mean().reset_index()
    for m in ("a", "b"):
        mine = per_inst[per_inst.model == m]
        assert out[m]["score"] == pytest.approx(mine["value"].mean())
        assert out[m]["n"] == len(mine)
        assert out[m]["n_failed"] == sum(r.value is None for r in rows if r.model == m)
        for src, grp in mine.groupby("source"):
            assert out[m][f"source.{src}"] == pytest.approx(grp["value"].mean())
        for d, grp in per_rubric[per_rubric.model == m].groupby("rubric_index"):
            assert out[m][f"dim{d}"] == pytest.approx(grp["value"].mean())
        assert out[m]["score_lower"] <= out[m]["score"] <= out[m]["score_upper"]


def test_bootstrap_is_seeded_and_narrows_with_n():
    x = np.random.default_rng(3).integers(1, 6, size=400).astype(float)
    assert bootstrap_ci(x, 500, seed=5) == bootstrap_ci(x, 500, seed=5)
    assert bootstrap_ci(x, 500, seed=5) != bootstrap_ci(x, 500, seed=6)
    wide = np.subtract(*bootstrap_ci(x[:25], 500, 5)[::-1])
    narrow = np.subtract(*bootstrap_ci(x, 500, 5)[::-1])
    assert narrow < wide
    # the percentile CI of a bootstrap agrees with the normal approximation for a large sample
    se = x.std(ddof=1) / np.sqrt(len(x))
    lo, hi = bootstrap_ci(x, 4000, seed=0)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_pairwise_counts_against_brute_force():
    rows = _random_rows(seed=4)
    res = pairwise(rows, "a", "b")
    sums = {}
    for r in rows:
        if r.value is not None:
            sums.setdefault((r.model, r.instance_id, r.rubric_index), []).append(r.value)
    inst = {}
    for (m, i, d), v in sums.items():
        inst.setdefault((m, i), []).append(sum(v) / len(v))
    wins = ties = losses = 0
    for i in range(30):
        a = sum(inst[("a", f"i{i}")]) / len(inst[("a", f"i{i}")])
        b = sum(inst[("b", f"i{i}")]) / len(inst[("b", f"i{i}")])
        wins, ties, losses = wins + (a > b), ties + (a == b), losses + (a < b)
    assert (res["wins"], res["ties"], res["losses"], res["n"]) == (wins, ties, losses, 30)
    assert res["tie_win_rate"] == pytest.approx((wins + ties) / 30)
    flipped = pairwise(rows, "b", "a")
    assert flipped["wins"] == losses and flipped["tie_win_rate"] == pytest.approx((losses + ties) / 30)
    assert pairwise(rows, "a", "b", unit="rubric")["n"] == len({(i, d) for (m, i, d) in sums if m == "a"}
                                                               & {(i, d) for (m, i, d) in sums if m == "b"})
    with pytest.raises(ValueError, match="no scored"):
        pairwise(rows, "a", "zzz")


def test_task_aggregates_judgments_and_writes_per_sample_rows(tmp_path):
    record = json.loads(EXAMPLE.read_text())
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(dict(record, id=k, source=k)) + "\n" for k in ("s1", "s2")))
    task = MultifacetedBench({"path": str(path), "n_boot": 100})
    instances = task.load()
    assert task.generation_spec().repetition_penalty == 1.03
    comps, judgments = [], []
    for inst in instances:
        for model, base in (("m1", 3), ("m2", 4)):
            comps.append(Completion(task=task.name, instance_id=inst.id, model=model, texts=["answer"]))
            for d in range(4):
                for r in range(3):
                    value = base + (d == 0 and r == 0)  # m1: rubric0 runs 4,3,3
                    judgments.append(Judgment(task=task.name, instance_id=inst.id, model=model,
                                              judge="multifaceted_rubric", judge_model="j", judge_config_hash="h",
                                              criterion=f"rubric{d}/run{r}", value=value))
    judgments.append(Judgment(task=task.name, instance_id="s1", model="m1", judge="multifaceted_rubric",
                              judge_model="j", judge_config_hash="h", criterion="rubric1/run3", value=None,
                              parse_status="parse_failure"))
    agg = task.aggregate(instances, comps, judgments, [])
    rows = rows_from_judgments(judgments, instances)
    assert agg["m1"]["n_failed"] == 1 and agg["m1"]["n"] == 2
    expected_m1 = ((3 + 1 / 3) + 3 + 3 + 3) / 4
    assert agg["m1"]["score"] == pytest.approx(expected_m1) and agg["m1"]["dim0"] == pytest.approx(3 + 1 / 3)
    assert set(k for k in agg["m1"] if k.startswith("source.") and "_" not in k) == {"source.s1", "source.s2"}
    assert summarize(rows, n_boot=100) == agg
    vs = MultifacetedBench({"path": str(path), "n_boot": 100, "baseline": "m2"}).aggregate(instances, comps, judgments, [])
    # m1 (about 3.08) loses to m2 (4) on both instances
    assert (vs["m1"]["vs.m2.wins"], vs["m1"]["vs.m2.losses"], vs["m1"]["vs.m2.tie_win_rate"]) == (0, 2, 0.0)
    assert "vs.m2.n" not in vs["m2"]
    with pytest.raises(ValueError, match="baseline"):
        MultifacetedBench({"path": str(path), "baseline": "nope"}).aggregate(instances, comps, judgments, [])
    samples = task.per_sample(instances, comps, judgments, [])
    row = next(s for s in samples if s["model"] == "m1" and s["instance_id"] == "s1")
    assert row["score"] == pytest.approx(expected_m1) and len(row["dims"]) == 4 and len(row["judgments"]) == 13
    assert row["prompt"] == record["prompt"] and row["reference"] == record["reference_answer"]
