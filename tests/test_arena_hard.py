"""Arena-Hard-Auto v0.1: exact agreement with the official show_result.py on oracle set A, and the rest."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.records import Completion, Judgment
from judges.arena_hard_judge import ArenaHardJudge, get_score
from reports import arena_hard_metrics as AH
from tasks.arena_hard import ArenaHard, judgment_files, read_judgments

JUDGE_SUBDIR = "inputs/data/arena-hard-v0.1/model_judgment/gpt-4-1106-preview"


@pytest.fixture(scope="module")
def oracle(oracle_dir) -> Path:
    d = oracle_dir / "arena_hard_v0.1_setA"
    if not d.exists():
        pytest.skip("oracle set A not present")
    return d


def official_csv(oracle: Path, run: str) -> pd.DataFrame:
    (path,) = sorted((oracle / "outputs" / run).glob("arena_hard_leaderboard_*.csv"))
    return pd.read_csv(path).set_index("model")


def leaderboard_args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    ArenaHard.add_leaderboard_args(p)
    argv = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


@pytest.mark.parametrize("run,order", [("official_run_glob_order", "outputs/official_run_glob_order/glob_order.txt"),
                                       ("supplementary_sorted_glob_order", None)])
def test_leaderboard_equals_official_csv(oracle, run, order):
    args = leaderboard_args(judgments=oracle / JUDGE_SUBDIR, format="csv",
                            **({"file_order": oracle / order} if order else {}))
    table, _, label = ArenaHard.leaderboard_table(args)
    ours = table.set_index("model")
    ref = official_csv(oracle, run)
    assert sorted(ours.index) == sorted(ref.index)
    for col, refcol in [("score", "score"), ("lower", "rating_q025"), ("upper", "rating_q975")]:
        diff = (ours[col] - ref.loc[ours.index, refcol]).abs()
        assert diff.max() < 0.005, (col, diff.idxmax(), diff.max())
    for m in ours.index:  # the CI string of the --output CSV too
        r = ours.loc[m]
        assert AH.ci_string(r["score"], r["lower"], r["upper"]) == ref.loc[m, "CI"]
    assert "official-compatible" in label
    # the CSV printed to stdout has one row per model and the named columns
    text = ArenaHard.leaderboard(args)
    printed = pd.read_csv(__import__("io").StringIO(text))
    assert list(printed.columns[:4]) == ["model", "score", "lower", "upper"] and len(printed) == len(ref)


def test_battles_equal_official_battles_file(oracle):
    files = judgment_files(oracle / JUDGE_SUBDIR, oracle / "outputs/official_run_glob_order/glob_order.txt")
    battles = AH.battles_from_judgments(read_judgments(files, "gpt-4-0314"))
    ref = pd.read_json(oracle / "outputs/official_run_glob_order/arena_hard_battles.jsonl", lines=True)
    cols = ["question_id", "model_a", "model_b", "winner"]
    assert len(battles) == len(ref)
    assert (battles[cols].to_numpy() == ref[cols].to_numpy()).all()


def test_closed_form_equals_bt_score(oracle):
    files = judgment_files(oracle / JUDGE_SUBDIR, None)
    battles = AH.battles_from_judgments(read_judgments(files, "gpt-4-0314"))
    closed = AH.closed_form_scores(battles)
    table = AH.leaderboard(battles, num_rounds=5).set_index("model")
    for m, v in closed.items():
        assert abs(round(v, 2) - table.loc[m, "score"]) < 0.005


def test_batched_newton_matches_sklearn_logistic_on_general_design():
    # a design with battles between non-baseline models too (not only vs the baseline)
    rng = np.random.default_rng(3)
    models = ["base", "m1", "m2", "m3"]
    rows = []
    for _ in range(600):
        a, b = rng.choice(4, size=2, replace=False)
        rows.append({"question_id": "q", "model_a": models[a], "model_b": models[b],
                     "winner": rng.choice(["model_a", "model_b", "tie"], p=[0.45, 0.4, 0.15])})
    battles = pd.DataFrame(rows)
    types = AH.battle_types(battles)
    ours = AH.fit_bt(types, AH.counts_of(types)[None], types.models.index("base"))[0]
    # reference: the official duplicated-row logistic regression, via sklearn
    from sklearn.linear_model import LogisticRegression
    dup = pd.concat([battles, battles], ignore_index=True)
    idx = {m: i for i, m in enumerate(types.models)}
    X = np.zeros((len(dup), len(models)))
    X[np.arange(len(dup)), dup["model_a"].map(idx)] = np.log(10)
    X[np.arange(len(dup)), dup["model_b"].map(idx)] = -np.log(10)
    y = (dup["winner"] == "model_a").to_numpy(dtype=float).copy()
    tie = (dup["winner"] == "tie").to_numpy().copy()
    tie[len(tie) // 2:] = False
    y[tie] = 1.0
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=1000).fit(X, y)
    elo = 400 * lr.coef_[0] + 1000
    elo += 1000 - elo[idx["base"]]
    assert np.allclose(ours, elo, atol=1e-3)


def test_clustered_bootstrap_is_labelled_and_wider(oracle):
    args = leaderboard_args(judgments=oracle / JUDGE_SUBDIR, clustered_rounds=200)
    table, _, label = ArenaHard.leaderboard_table(args)
    assert "question-clustered" in label and "harness" in label
    t = table[table["model"] != "gpt-4-0314"]
    assert ((t["clustered_upper"] - t["clustered_lower"]).mean() > (t["upper"] - t["lower"]).mean())
    assert (t["clustered_lower"] <= t["score"]).all() and (t["score"] <= t["clustered_upper"]).all()


# ----------------------------------------------------------------------------- bad input
def _write(dirpath: Path, name: str, rows: list[dict | str]) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    with open(dirpath / name, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def _row(q, model, s1="A>B", s2="B>A", **extra):
    return {"question_id": q, "model": model, "judge": "j", "games": [{"score": s1}, {"score": s2}], **extra}


def test_duplicate_question_ids_are_an_error(tmp_path):
    _write(tmp_path / "j", "m.jsonl", [_row("q1", "m"), _row("q1", "m")])
    with pytest.raises(ValueError, match=r"m\.jsonl: line 2: duplicate question_id 'q1'"):
        ArenaHard.leaderboard_table(leaderboard_args(judgments=tmp_path / "j"))


def test_other_baseline_and_truncated_file_are_errors(tmp_path):
    _write(tmp_path / "a", "m.jsonl", [_row("q1", "m", baseline="gpt-4o")])
    with pytest.raises(ValueError, match="baseline 'gpt-4o'"):
        ArenaHard.leaderboard_table(leaderboard_args(judgments=tmp_path / "a"))
    _write(tmp_path / "b", "m.jsonl", [_row("q1", "m"), '{"question_id": "q2", "mod'])
    with pytest.raises(ValueError, match=r"m\.jsonl: line 2 is not valid JSON"):
        ArenaHard.leaderboard_table(leaderboard_args(judgments=tmp_path / "b"))
    _write(tmp_path / "c", "m.jsonl", [{"question_id": "q1", "model": "m"}])
    with pytest.raises(ValueError, match="lacks field 'games'"):
        ArenaHard.leaderboard_table(leaderboard_args(judgments=tmp_path / "c"))


def test_unparsable_games_dropped_alone_and_model_without_verdicts_reported(tmp_path, capsys):
    _write(tmp_path / "j", "good.jsonl", [_row(f"q{i}", "good", "A>B", None) for i in range(6)])
    _write(tmp_path / "j", "bad.jsonl", [_row("q1", "bad", None, "junk")])
    table, notes, _ = ArenaHard.leaderboard_table(leaderboard_args(judgments=tmp_path / "j", rounds=10))
    assert "bad" not in set(table["model"])
    assert any("'bad' excluded" in n for n in notes)
    assert any("8 unparsable games" in n for n in notes)
    # game 1 "A>B" is a baseline win, the null game 2 is dropped alone: model scores 0 on 6 rows
    battles = AH.battles_from_judgments([_row("q", "good", "A>B", None), _row("r", "good", None, "A>>B")])
    assert list(battles["winner"]) == ["model_a", "model_b", "model_b", "model_b"]


def test_file_order_must_list_the_files(tmp_path):
    _write(tmp_path / "j", "m.jsonl", [_row("q1", "m")])
    (tmp_path / "order.txt").write_text("other.jsonl\n")
    with pytest.raises(ValueError, match="does not list exactly the files"):
        ArenaHard.leaderboard_table(leaderboard_args(judgments=tmp_path / "j", file_order=tmp_path / "order.txt"))


# ----------------------------------------------------------------------------- judge
def test_judge_prompts_follow_config_and_swap_positions(data_dir):
    task = ArenaHard(data_dir=data_dir)
    inst = task.load()[0]
    judge = ArenaHardJudge({"judge_config": str(data_dir / "arena_hard_v0.1/config/judge_config.yaml")})
    comp = Completion(task="arena_hard", instance_id=inst.id, model="m", texts=["MODEL ANSWER {x}"])
    g1, g2 = judge.calls(inst, comp)
    import yaml
    cfg = yaml.safe_load((data_dir / "arena_hard_v0.1/config/judge_config.yaml").read_text())
    assert g1.messages[0] == {"role": "system", "content": cfg["system_prompt"]}
    base = inst.metadata["baseline_answer"]
    expected1 = (f"<|User Prompt|>\n{inst.turns[0]}\n\n<|The Start of Assistant A's Answer|>\n{base}\n"
                 f"<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\nMODEL ANSWER {{x}}\n"
                 f"<|The End of Assistant B's Answer|>")
    assert g1.messages[1]["content"] == expected1
    assert g2.messages[1]["content"].index("MODEL ANSWER") < g2.messages[1]["content"].index(base[:30])
    assert (g1.temperature, g1.max_tokens) == (0.0, 4096) and [g1.criterion, g2.criterion] == ["game1", "game2"]
    assert len(task.load()) == 500


def test_verdict_parsing_semantics():
    pat = re.compile(r"\[\[([AB<>=]+)\]\]")
    assert get_score("blah My final verdict is [[B>>A]]", pat) == ("B>>A", False)
    assert get_score("[[A>B]] and again [[A>B]]", pat) == ("A>B", False)
    assert get_score("[[A>B]] but then [[B>A]]", pat) == (None, False)  # ambiguous: no retry
    assert get_score("no label", pat) == (None, True)  # the official code asks to continue
    judge = ArenaHardJudge()
    p = judge.parse("My final verdict is [[A<B]]", None)
    assert not p.ok and p.value == "A<B"
    assert judge.parse("final: [[A=B]]", None).value == "A=B"
    from judges.base import JudgeCall
    follow = judge.followup(JudgeCall("game1", [{"role": "user", "content": "q"}]), "thinking")
    assert follow.messages[-1]["content"].startswith("continue your judgment")
    assert ArenaHardJudge.joined(["a", "b"]) == "\na\nb"


def test_aggregate_from_records_matches_file_path(oracle, data_dir):
    """Harness judgments -> the same numbers as the official-format files."""
    files = judgment_files(oracle / JUDGE_SUBDIR, None)
    rows = [r for r in read_judgments(files, "gpt-4-0314") if r["model"] in ("gemma-2b-it", "gpt-4-0613")]
    task = ArenaHard(options={"clustered_rounds": 0}, data_dir=data_dir)
    instances = task.load()
    judgments = [Judgment(task="arena_hard", instance_id=r["question_id"], model=r["model"], judge="arena_hard_v0.1",
                          judge_model="j", judge_config_hash="h", criterion=f"game{g + 1}",
                          value=r["games"][g]["score"],
                          parse_status="ok" if r["games"][g]["score"] else "parse_failure")
                 for r in rows for g in (0, 1)]
    res = task.aggregate(instances, [], judgments, [])
    battles = AH.battles_from_judgments(sorted(rows, key=lambda r: r["model"]))
    ref = AH.leaderboard(battles).set_index("model")
    for m in ("gemma-2b-it", "gpt-4-0613"):
        assert res[m]["score"] == ref.loc[m, "score"]
        assert (res[m]["score_lower"], res[m]["score_upper"]) == (ref.loc[m, "lower"], ref.loc[m, "upper"])
        assert res[m]["n_parse_failures"] == sum(1 for r in rows if r["model"] == m
                                                 for g in r["games"] if g["score"] is None)


def test_pipeline_end_to_end_with_scripted_backends(data_dir, tmp_path):
    """build -> generate -> judge -> aggregate through the harness pipeline (scripted model and judge)."""
    import asyncio
    from harness.config import JudgeConfig, ModelConfig, RunConfig, TaskConfig
    from harness.fake import _digest
    from harness.pipeline import run_all
    from harness.registry import JUDGES

    if "arena_hard_v0.1" not in JUDGES.names():
        JUDGES.register("arena_hard_v0.1", "judges.arena_hard_judge:ArenaHardJudge")
    from harness.fake import ScriptedBackend
    from harness.registry import BACKENDS

    class Answers(ScriptedBackend):
        def __init__(self, model, **kw):
            super().__init__(model, answer=lambda r: "an answer", **kw)

    class Verdicts(ScriptedBackend):
        def __init__(self, model, **kw):
            super().__init__(model, answer=lambda r: verdicts[_digest(r) % len(verdicts)], **kw)

    BACKENDS.register("test_answers", Answers)
    BACKENDS.register("test_verdicts", Verdicts)
    verdicts = ["My final verdict is [[A>B]]", "[[B>>A]]", "[[A=B]]", "no verdict here", "[[B>A]] or [[A>B]]"]
    cfg = RunConfig(name="ah", data_dir=str(data_dir),
                    models=[ModelConfig(name="m1", backend="test_answers")],
                    judge=JudgeConfig(name="j", backend="test_verdicts"),
                    tasks=[TaskConfig(name="arena_hard", limit=6, options={"clustered_rounds": 50})],
                    calls={"parse_retries": 0})
    out = asyncio.run(run_all(cfg, tmp_path / "run"))
    res = out["results"]["arena_hard"]["m1"]
    assert 0 <= res["score_lower"] <= res["score"] <= res["score_upper"] <= 100
    assert "official-compatible" in res["ci_method"] and "harness" in res["clustered_ci_method"]
    judg = [json.loads(l) for l in (tmp_path / "run" / "samples" / "arena_hard.jsonl").read_text().splitlines()]
    assert len(judg) == 6 and all(len(r["judgments"]) == 2 for r in judg)
    assert res["n_parse_failures"] == out["failures"]["arena_hard"]["judge_parse_failures"]
