"""A task's judge step runs while the next task generates; each step's row counts only its own calls."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
import yaml

from harness.cli import main
from harness.fake import ScriptedBackend
from harness.registry import BACKENDS

EVENTS: list[tuple[float, str, str]] = []


class SlowWriter(ScriptedBackend):
    """A writer that takes a while per call, so that overlap (or its absence) shows in the timeline."""

    name = "slow-writer-overlap"
    default_concurrency = 1

    async def generate(self, requests):
        EVENTS.append((time.perf_counter(), "gen-start", ""))
        await asyncio.sleep(0.15)
        out = await super().generate(requests)
        EVENTS.append((time.perf_counter(), "gen-end", ""))
        return out


class RecordingJudge(ScriptedBackend):
    name = "recording-judge-overlap"

    async def generate(self, requests):
        EVENTS.append((time.perf_counter(), "judge", ""))
        return await super().generate(requests)


BACKENDS.register(SlowWriter.name, SlowWriter)
BACKENDS.register(RecordingJudge.name, RecordingJudge)


def _config(tmp_path, data_dir):
    raw = {"name": "overlap", "data_dir": str(data_dir),
           "models": [{"name": "w", "backend": SlowWriter.name, "model": "writer"}],
           "judge": {"name": "j", "backend": RecordingJudge.name, "model": "judge"},
           "tasks": [{"name": "mt_bench", "limit": 2}, {"name": "alpaca_eval", "limit": 6}],
           "calls": {"concurrency": 1}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_judging_of_a_task_overlaps_the_next_tasks_generation(tmp_path, data_dir, capsys):
    EVENTS.clear()
    out = tmp_path / "run"
    assert main(["run", str(_config(tmp_path, data_dir)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    first_judge = min(t for t, kind, _ in EVENTS if kind == "judge")
    last_gen = max(t for t, kind, _ in EVENTS if kind == "gen-end")
    # MT-Bench's judge calls began before the last AlpacaEval generation finished
    assert first_judge < last_gen
    stages = json.loads((out / "results.json").read_text())["summary"]["stages"]
    rows = {(s["stage"], s["task"]): s for s in stages}
    # each row counts its own calls, though they ran at the same time: 2 questions x 2 turns, 6 instructions
    assert rows[("generate", "mt_bench")]["requests"] == 4
    assert rows[("generate", "alpaca_eval")]["requests"] == 6
    assert rows[("judge", "mt_bench")]["requests"] == 4  # single-answer grading, one call per turn
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert summary["generation"]["alpaca_eval/w"]["requests"] == 6
    # the scripted judge prints no m/M token: 6 calls, each asked again parse_retries (2) times
    assert rows[("judge", "alpaca_eval")]["requests"] == 18
    # no call counted twice or missed: the rows add up to the run's calls
    assert sum(s["requests"] for s in stages) == results["calls"]["requests"]
    assert summary["elapsed_s"] < sum(s["wall_s"] for s in stages if s["stage"] != "aggregate")
    assert "elapsed" in printed


def test_a_judge_step_that_fails_stops_the_run_with_its_error(tmp_path, data_dir, monkeypatch):
    from harness.pipeline import Run

    real = Run.judge

    async def failing(self, tcfg, jcfg, models=None):
        if tcfg.name == "mt_bench":
            raise RuntimeError("judge step exploded")
        return await real(self, tcfg, jcfg, models)

    monkeypatch.setattr(Run, "judge", failing)
    with pytest.raises(RuntimeError, match="judge step exploded"):
        main(["run", str(_config(tmp_path, data_dir)), "--out", str(tmp_path / "run")])
