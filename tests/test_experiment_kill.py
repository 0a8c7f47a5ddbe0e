"""`harness run CONFIG` with an `experiment:` block is one resumable graph: SIGKILL anywhere in it (collection,
training, generation, best-of-n sampling, reward scoring, judging), then rerun the same command, and the run
ends with the results of an uninterrupted run, sends no finished model call again and repeats no finished
training run.

The study (tests/support/experiment_kill.py): a collection built by a scripted generator; SFT and a reward
model trained on it from the tiny model; a scripted writer (with a `system: none` variant) and the trained SFT
model (hf) evaluated on the README's Multifaceted example and two MT-Bench questions by a scripted judge;
best-of-n of the writer reranked by the trained reward model; the report.

The experiment runs with ``jobs: 2``: each stage in a child process, SFT and RM training side by side. Each
run goes through a driver (``DRIVER`` there) that logs, one flushed line each, every request's cache key as
the call layer sends it, every training start/end and step, and every reward-model row scored, and SIGKILLs
the run (the `harness run` process, then the stage's own; a stage running beside it must die with the run):

- at a model call: when the k-th call of the chosen kind has been answered by the backend but before the call
  layer has committed it (cache, run store), so its answer is lost and the rerun must send it again; the other
  calls in flight (sent, not committed to the call cache: at most the concurrency of each `CallLayer.run` then
  running, and the pipeline runs a task's judging beside the next task's generation) are sent again too, nothing
  else;
- in training: at the k-th optimizer step of the reward model's run (the SFT run beside it finished or not);
- in reward scoring: right after the first reward-model batch's scores were stored.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from support.experiment_kill import DRIVER, read_log, write_configs

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), str(TESTS), os.environ.get("PYTHONPATH")) if p)}

# kill point -> k (which call of that kind, which optimizer step, which reward batch); chosen inside each stage
KILLS = {
    "collection": 5,  # of 14 collection calls
    "train-rm": 2,  # of 3 steps (SFT trains beside it)
    "generate": 6,  # of 11 generation calls (writer, its variant, the trained SFT model)
    "rerank-sampling": 2,  # of 4 pool samples
    "reward-scoring": 1,  # of 4 one-candidate batches
    "judge": 30,  # of 73 judge calls of the evaluation
    "judge-bestofn": 10,  # of 21 judge calls of the best-of-n models (the evaluation run again)
}
CALL_KINDS = ("collection", "generate", "rerank-sampling", "judge", "judge-bestofn")
TRAINED = Counter({"sft": 1, "rm": 1})


def _differences(got: dict, want: dict) -> str:
    """task/model: the metrics that differ, both ways (the assertion's message)."""
    out = []
    for task in sorted(set(got) | set(want)):
        for model in sorted(set(got.get(task, {})) | set(want.get(task, {}))):
            a, b = got.get(task, {}).get(model), want.get(task, {}).get(model)
            if a != b:
                keys = sorted(set(a or {}) | set(b or {}))
                out.append(f"{task}/{model}: " + ", ".join(f"{k} {(a or {}).get(k)!r} vs {(b or {}).get(k)!r}"
                                                            for k in keys if (a or {}).get(k) != (b or {}).get(k)))
    return "; ".join(out)


def _harness(root: Path, config: Path, log: Path, kill: str = "none", k: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", DRIVER, kill, str(k), "run", str(config), "--out", str(root / "run")]
    return subprocess.run(cmd, cwd=REPO, env={**ENV, "KILL_LOG": str(log)}, capture_output=True, text=True,
                          timeout=600)


def _results(root: Path) -> dict:
    return json.loads((root / "run" / "results.json").read_text())["results"]


def _sent(events: list[dict]) -> list[dict]:
    return [e for e in events if e["ev"] == "call"]


def _trainings(events: list[dict], ev: str) -> Counter:
    return Counter(e["method"] for e in events if e["ev"] == ev)


def _scored(events: list[dict]) -> Counter:
    return Counter(e["seq"] for e in events if e["ev"] == "scored")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, tiny_model_dir):
    """The same study, uninterrupted: its results and its log."""
    root = tmp_path_factory.mktemp("reference")
    config = write_configs(root, data_dir, tiny_model_dir)
    done = _harness(root, config, root / "log.jsonl")
    assert done.returncode == 0, done.stderr[-4000:]
    events = read_log(root / "log.jsonl")
    sent = _sent(events)
    keys = Counter(e["key"] for e in sent)
    assert sent and max(keys.values()) == 1  # an uninterrupted run sends each request once
    kinds = Counter(e["kind"] for e in sent)
    for kind, k in KILLS.items():  # every kill point lies inside its stage
        if kind in CALL_KINDS:
            assert len({(e["pid"], e["call"]) for e in sent if e["kind"] == kind}) > k, (kind, kinds)
    assert len([e for e in events if e["ev"] == "step" and e["method"] == "rm"]) > KILLS["train-rm"]
    assert sum(_scored(events).values()) > KILLS["reward-scoring"]
    assert _trainings(events, "train_start") == _trainings(events, "train_end") == TRAINED
    results = _results(root)
    assert {"w", "w@sys=none", "sft", "w@bo1[rm]", "w@bo2[rm]", "w@bo4[rm]"} <= set(results["multifaceted_bench"])
    assert (root / "report" / "report.html").exists()
    return {"results": results, "events": events, "kinds": kinds}


@pytest.mark.parametrize("kill", list(KILLS))
def test_sigkill_anywhere_then_rerun_resumes_repeats_nothing_loses_nothing(kill, reference, tmp_path, data_dir,
                                                                          tiny_model_dir):
    config = write_configs(tmp_path, data_dir, tiny_model_dir)
    killed_log, rerun_log = tmp_path / "killed.jsonl", tmp_path / "rerun.jsonl"

    killed = _harness(tmp_path, config, killed_log, kill, KILLS[kill])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    before = read_log(killed_log)
    # killed where it was meant to (a stage running beside the killed one may log until it dies with the run)
    kills = [e for e in before if e["ev"] == "kill"]
    assert len(kills) == 1 and kills[0]["point"] == kill, kills or before[-3:]
    killed_at = kills[0]

    rerun = _harness(tmp_path, config, rerun_log)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    after = read_log(rerun_log)
    assert not [e for e in after if e["ev"] == "kill"]

    # 1. loses nothing: the numbers of the uninterrupted run
    got = _results(tmp_path)
    assert got == reference["results"], _differences(got, reference["results"])
    assert (tmp_path / "report" / "report.html").exists()

    # 2. no finished model call sent again
    sent_before, sent_after = _sent(before), _sent(after)
    assert max(Counter(e["key"] for e in sent_before).values()) == 1
    assert not sent_after or max(Counter(e["key"] for e in sent_after).values()) == 1
    again = {e["key"] for e in sent_before} & {e["key"] for e in sent_after}
    committed = {k for e in before if e["ev"] == "commit" for k in e["keys"]}
    in_flight = [e for e in sent_before if e["key"] not in committed]  # sent, answer not committed at the kill
    # what is sent again is exactly what was in flight: no committed call, and nothing in flight is lost
    assert again == {e["key"] for e in in_flight}, (Counter(e["kind"] for e in sent_before if e["key"] in again),
                                                    Counter(e["kind"] for e in in_flight))
    if kill in CALL_KINDS:
        # calls and CallLayer.run invocations are numbered per process (each stage runs in its own)
        killing = [e for e in sent_before if (e["pid"], e["call"]) == (killed_at["pid"], killed_at["call"])]
        assert killed_at["kind"] == kill and killing
        # the killed call was answered but not committed: it is among those asked again ...
        assert {e["key"] for e in killing} <= again
        # ... and each CallLayer.run had at most its concurrency in flight; at most two ran at once (a task's
        # judging runs beside the next task's generation, harness.pipeline.execute)
        calls_by_run: dict[tuple, set] = {}
        for e in in_flight:
            calls_by_run.setdefault((e["pid"], e["run"]), set()).add(e["call"])
        conc = {(e["pid"], e["run"]): e["conc"] for e in in_flight}
        assert all(len(c) <= conc[r] for r, c in calls_by_run.items()), (calls_by_run, conc)
        assert len(calls_by_run) <= 2, calls_by_run
    else:  # killed in training or reward scoring: every call made had been committed
        assert not in_flight and not again, Counter(e["kind"] for e in in_flight)
    # together the two runs sent as many distinct requests as the uninterrupted one, each once but those in
    # flight (counted, not compared: the trained model's cache keys hold its path; and not per kind: a rerun
    # killed after `rerank` judges the best-of-n models in its first evaluation)
    assert len({e["key"] for e in sent_before + sent_after}) == sum(reference["kinds"].values())
    assert len(sent_before) + len(sent_after) == sum(reference["kinds"].values()) + len(again)

    # 3. no finished training run repeated; one killed mid-way is redone once, from the start
    finished_before = _trainings(before, "train_end")
    started_after = _trainings(after, "train_start")
    assert not set(finished_before) & set(started_after), (finished_before, started_after)
    assert finished_before + _trainings(after, "train_end") == TRAINED
    if kill == "collection":
        assert not _trainings(before, "train_start") and started_after == TRAINED
    elif kill == "train-rm":
        # SFT trains beside the RM (jobs: 2): finished by the kill, or killed with the run and trained again
        assert finished_before <= Counter({"sft": 1}) and _trainings(before, "train_start") == TRAINED
        assert started_after == TRAINED - finished_before
        steps = [e["step"] for e in after if e["ev"] == "step" and e["method"] == "rm"]
        assert steps == [1, 2, 3]  # trained again from the first step
    else:  # killed after training: the rerun trains nothing
        assert finished_before == TRAINED and not started_after

    # and no reward-model input scored again, none left unscored (sets: two samples of the same text are one
    # input, scored once or twice depending on whether the first one's score is stored when the second's is due)
    scored_before, scored_after = _scored(before), _scored(after)
    assert not set(scored_before) & set(scored_after)
    assert set(scored_before) | set(scored_after) == set(_scored(reference["events"]))
    if kill == "reward-scoring":
        assert sum(scored_before.values()) == KILLS[kill] and scored_after
