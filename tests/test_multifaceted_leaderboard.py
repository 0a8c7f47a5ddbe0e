"""`harness leaderboard multifaceted_bench` over JANUS-format evaluation files."""
from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

from harness.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "tasks" / "multifaceted" / "readme_example.json"


def _write_janus_eval(path: Path, model_seed: int, n: int = 12) -> float:
    """A file shaped like JANUS run_eval_openai.py output; returns JANUS's printed average."""
    rng = random.Random(model_seed)
    record = json.loads(EXAMPLE.read_text())
    judgment = {}
    avg = 0.0
    for k in range(n):
        scores = [rng.randint(1, 5) for _ in range(4)]
        judgment[f"q{k}"] = {**record, "id": f"q{k}", "source": ["koala", "flask"][k % 2], "response": "r",
                             "feedback": ["fb"] * 4, "score": scores}
        avg += sum(scores) / len(scores)  # JANUS: mean over rubrics, then over instances
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(judgment, indent=4))
    return avg / n


def _run(capsys, *argv) -> str:
    assert main(["leaderboard", "multifaceted_bench", *argv]) == 0
    return capsys.readouterr().out


def test_leaderboard_matches_janus_average_and_averages_runs(tmp_path, capsys):
    janus_a = [_write_janus_eval(tmp_path / f"run{r}" / "responses_gpt4_eval" / "model-a_evaluation.json", 10 + r)
               for r in range(3)]
    janus_b = _write_janus_eval(tmp_path / "run0" / "responses_gpt4_eval" / "model-b_evaluation.json", 99)
    out = _run(capsys, "--judgments", str(tmp_path), "--format", "csv", "--rounds", "200", "--baseline", "model-b")
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(out))}
    assert float(rows["model-b"]["score"]) == pytest.approx(janus_b)
    assert float(rows["model-a"]["score"]) == pytest.approx(sum(janus_a) / 3)  # 3 runs averaged
    assert rows["model-a"]["runs"] == "3" and rows["model-b"]["runs"] == "1" and rows["model-a"]["n"] == "12"
    a = rows["model-a"]
    assert int(a["wins"]) + int(a["ties"]) + int(a["losses"]) == 12
    assert float(a["tie_win_rate"]) == pytest.approx((int(a["wins"]) + int(a["ties"])) / 12)
    assert float(a["lower"]) <= float(a["score"]) <= float(a["upper"])
    md = _run(capsys, "--judgments", str(tmp_path), "--rounds", "50")
    assert md.splitlines()[2].startswith("| model | score | lower | upper |") and "model-a" in md


def _error(capsys, *argv) -> str:
    """The CLI turns bad input into one error line on stderr and exit status 2."""
    assert main(["leaderboard", "multifaceted_bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and err.count("\n") == 1
    return err


def test_leaderboard_bad_input_is_one_named_error(tmp_path, capsys):
    bad = tmp_path / "m_evaluation.json"
    bad.write_text(json.dumps({"q1": {"score": ["five"]}}))
    assert "m_evaluation.json record 'q1': field 'score[0]'" in _error(capsys, "--judgments", str(bad))
    (tmp_path / "empty").mkdir()
    assert "no *_evaluation.json" in _error(capsys, "--judgments", str(tmp_path / "empty"))
    assert "--baseline 'nobody'" in _error(capsys, "--judgments", str(_good(tmp_path)), "--baseline", "nobody")
    trunc = tmp_path / "t_evaluation.json"
    trunc.write_text(_good(tmp_path).read_text()[:100])
    assert "not valid JSON" in _error(capsys, "--judgments", str(trunc))


def _good(tmp_path: Path) -> Path:
    path = tmp_path / "good" / "m_evaluation.json"
    _write_janus_eval(path, 1, n=2)
    return path
