"""MT-Bench: FastChat prompts, parsing and show_result semantics against the oracle set."""
from __future__ import annotations

import csv
import io
import json

import pytest

from harness.cli import main
from harness.records import Completion
from judges.mt_bench_judge import MTBenchSingleJudge, load_judge_prompts, parse_rating
from tasks.mt_bench import MTBench


@pytest.fixture(scope="module")
def oracle(oracle_dir):
    return oracle_dir / "mt_bench_setA"


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fastchat_stdout_identical(oracle, capsys):
    judgments = oracle / "inputs/data/mt_bench/model_judgment/gpt-4_single.jsonl"
    code, out, _ = run_cli(["leaderboard", "mt_bench", "--judgments", str(judgments)], capsys)
    assert code == 0
    expected = (oracle / "outputs/stdout_single.txt").read_text().splitlines()
    got = out.splitlines()
    assert got[0] == expected[0]  # "Mode: single"
    assert got[2:] == expected[2:]  # the three tables, byte for byte (line 2 names the input path)


def test_csv_matches_full_precision_oracle(oracle, capsys):
    judgments = oracle / "inputs/data/mt_bench/model_judgment/gpt-4_single.jsonl"
    code, out, _ = run_cli(["leaderboard", "mt_bench", "--judgments", str(judgments), "--format", "csv"], capsys)
    assert code == 0
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(out))}
    for col, fname in (("turn1", "single_turn1.csv"), ("turn2", "single_turn2.csv"),
                       ("average", "single_average.csv")):
        ref = {r["model"]: float(r["score"]) for r in csv.DictReader(open(oracle / "outputs" / fname))}
        assert set(ref) == set(rows)
        for m, v in ref.items():
            assert float(rows[m][col]) == pytest.approx(v, abs=1e-12), (col, m)


def test_average_pools_turns_when_rows_dropped(oracle, capsys):
    # the oracle has failures: pooled average differs from the mean of the turn means somewhere
    judgments = oracle / "inputs/data/mt_bench/model_judgment/gpt-4_single.jsonl"
    _, out, _ = run_cli(["leaderboard", "mt_bench", "--judgments", str(judgments), "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert any(abs(float(r["average"]) - (float(r["turn1"]) + float(r["turn2"])) / 2) > 1e-9 for r in rows)


@pytest.mark.parametrize("text,value,ok", [
    ("Rating: [[7]]", 7, True),
    ("Rating: [[8.5]]", 8.5, True),
    ("I give it [6] overall", 6, True),
    ("first [[3]] then [[9]]", 3, True),  # FastChat takes the first match
    ("Rating: [[11]]", 11, True),  # no clamping
    ("no rating given", -1, False),
    ("$ERROR$", -1, False),
])
def test_rating_parser_matches_fastchat(text, value, ok):
    p = parse_rating(text, official=True)  # FastChat semantics: the official mode
    assert (p.value, p.ok) == (value, ok)


def test_judge_prompts_follow_fastchat(data_dir):
    task = MTBench(data_dir=data_dir)
    inst = {i.id: i for i in task.load()}
    assert len(inst) == 80
    prompts = load_judge_prompts(str(data_dir / "mt_bench/judge_prompts.jsonl"))
    judge = MTBenchSingleJudge()
    writing = inst["81"]
    calls = judge.calls(writing, Completion("mt_bench", "81", "m", ["A1", "A2"]))
    assert [c.criterion for c in calls] == ["turn1", "turn2"]
    p1 = prompts["single-v1"]
    assert calls[0].messages == [{"role": "system", "content": p1["system_prompt"]},
                                 {"role": "user", "content": p1["prompt_template"].format(
                                     question=writing.turns[0], answer="A1")}]
    assert "### Assistant A:\nA2" in calls[1].messages[1]["content"]
    assert calls[1].messages[0]["content"] == prompts["single-v1-multi-turn"]["system_prompt"]
    math_q = inst["111"]
    assert math_q.category == "math" and math_q.reference
    mcalls = judge.calls(math_q, Completion("mt_bench", "111", "m", ["x", "y"]))
    assert math_q.reference[0] in mcalls[0].messages[1]["content"]
    assert mcalls[1].messages[0]["content"] == prompts["single-math-v1-multi-turn"]["system_prompt"]
    assert math_q.reference[1] in mcalls[1].messages[1]["content"]


def test_bad_question_files(tmp_path, data_dir, capsys):
    good = (data_dir / "mt_bench/question.jsonl").read_text().splitlines()
    d = tmp_path / "mt"
    (d / "reference_answer").mkdir(parents=True)
    (d / "reference_answer/gpt-4.jsonl").write_text((data_dir / "mt_bench/reference_answer/gpt-4.jsonl").read_text())
    (d / "judge_prompts.jsonl").write_text((data_dir / "mt_bench/judge_prompts.jsonl").read_text())
    row = json.loads(good[0])
    del row["turns"]
    (d / "question.jsonl").write_text("\n".join([json.dumps(row)] + good[1:]) + "\n")
    with pytest.raises(ValueError, match=r"question.jsonl: line 1: missing field .turns."):
        MTBench(options={"path": str(d)}).load()
    (d / "question.jsonl").write_text("\n".join(good[:3]) + "\n" + good[3][:40])
    with pytest.raises(ValueError, match=r"question.jsonl: line 4 is not valid JSON .*truncated"):
        MTBench(options={"path": str(d)}).load()
