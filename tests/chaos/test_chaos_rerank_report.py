"""SIGKILL of `harness rerank` and of `harness report` at random points, then a rerun: the same outputs as an
uninterrupted run, no finished work redone, nothing left behind.

- rerank (a candidates file of 12 MT-Bench prompts x 8 answers, a tiny sequence-classification reward
  model, as in tests/test_rerank.py): killed after the pool is stored, in the middle of scoring, or once
  the @bo<n> models are written (during the best-of-n analysis) or at a random moment; the rerun scores only the candidates without a stored score, and the
  scores, @bo<n> completions and bestofn/ analysis files equal an uninterrupted run's. A kill inside the
  analysis file's atomic write must leave no temp file after the rerun.
- report (the synthetic runs of tests/test_report.py): killed at a random moment of a report into a fresh
  target or over a previous report; the target is never a mix, and after the rerun it is byte for byte the
  uninterrupted report, with nothing beside it.

Kills of `harness train` are covered by tests/test_train_atomic.py and not repeated here.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from support.reward_models import build_seq_cls_rm

from .helpers import (KILL_IN_ATOMIC_WRITE, REPO, Sandbox, count, logical_duplicates, records, seeds, sigkill,
                      temp_leftovers, wait_until)

pytestmark = pytest.mark.chaos

NS = "1,2,4,8"
N_PROMPTS, PER_PROMPT = 12, 8
N_CANDIDATES = N_PROMPTS * PER_PROMPT
RERANK_OPTS = ["--n", NS, "--scorer-batch-tokens", "600"]
REPORT_OPTS = ["--bootstrap", "100", "--baseline", "base", "--max-instances", "5"]


# ------------------------------------------------------------------------------------------ rerank
@pytest.fixture(scope="module")
def rerank_inputs(tiny_model_dir, tmp_path_factory, data_dir):
    """A tiny reward model (test_rerank.py's seq_cls_rm) and a candidates file."""
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("rerank_inputs")
    rm = build_seq_cls_rm(tiny_model_dir, tmp / "seqcls-rm")
    root = data_dir / "mt_bench"
    questions = [json.loads(x) for x in (root / "question.jsonl").read_text().splitlines()][:N_PROMPTS]
    answers: dict = {}
    for f in sorted((root / "model_answer").glob("*.jsonl"))[:PER_PROMPT]:
        for line in f.read_text().splitlines():
            a = json.loads(line)
            answers.setdefault(a["question_id"], []).append(a["choices"][0]["turns"][0])
    rng = random.Random(0)
    rows = [{"instance_id": f"q{q['question_id']}", "system": "The user prefers concise answers.",
             "prompt": q["turns"][0][:200],
             "candidates": [t[: rng.randint(20, 600)] for t in answers[q["question_id"]][:PER_PROMPT]]}
            for q in questions]
    assert all(len(r["candidates"]) == PER_PROMPT for r in rows)
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return pool, rm


def rerank_outputs(out: Path) -> dict:
    scores = {}
    for s in records(out / "candidates", "score"):
        scores[(s["instance_id"], s["sample_index"], s["scorer"])] = s["value"]
    virtual = {}
    for c in records(out, "completion"):
        meta = c.get("metadata", {}).get("rerank", {})
        virtual[(c["model"], c["instance_id"])] = (c["texts"], meta.get("selected_sample"), meta.get("rewards"))
    files = {}
    for f in sorted((out / "bestofn").glob("[!.]*")):  # hidden temp files are temp_leftovers' business
        files[f.name] = json.loads(f.read_text()) if f.suffix == ".json" else f.read_text()
    return {"scores": scores, "virtual": virtual, "files": files}


def close(a, b, path="") -> list[str]:
    """Differences between two JSON-like values, floats compared to 1e-6 (batches of another size may
    change the last bits of a reward)."""
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6,
                                                                                      abs_tol=1e-6):
            return []
        return [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(map(str, set(a) ^ set(b)))[:5]} differ"]
        return [d for k in a for d in close(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in close(x, y, f"{path}[{i}]")]
    if isinstance(a, str) and isinstance(b, str) and "," in a and "\n" in a:  # a CSV: compare cell by cell
        ra = [row.split(",") for row in a.splitlines()]
        rb = [row.split(",") for row in b.splitlines()]
        return close([[_num(x) for x in r] for r in ra], [[_num(x) for x in r] for r in rb], path)
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _num(x: str):
    try:
        return float(x)
    except ValueError:
        return x


@pytest.fixture(scope="module")
def rerank_reference(rerank_inputs, tmp_path_factory, data_dir, libcache):
    pool, rm = rerank_inputs
    box = Sandbox(tmp_path_factory.mktemp("rerank_reference"), data_dir, libcache)
    out = box.out("rr")
    t0 = time.monotonic()
    done = box.run("rerank", "--candidates", str(pool), "--reward-model", str(rm), "--out", str(out), *RERANK_OPTS)
    seconds = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    assert f"{N_CANDIDATES} scored now" in done.stdout
    ref = rerank_outputs(out)
    assert len(ref["scores"]) == N_CANDIDATES and len(ref["virtual"]) == 4 * N_PROMPTS
    return ref, seconds


def scored_now(stdout: str) -> int:
    m = re.search(r"(\d+) scored now", stdout)
    assert m, stdout
    return int(m.group(1))


@pytest.mark.parametrize("seed", seeds())
def test_sigkill_rerank_then_rerun_equals_uninterrupted(seed, rerank_inputs, rerank_reference, sandbox, chaos):
    pool, rm = rerank_inputs
    ref, seconds = rerank_reference
    rng = random.Random(3000 + seed)
    phase = ["scoring", "pool", "analysis"][seed] if seed < 3 else rng.choice(["scoring", "pool", "analysis", "timed"])
    out = sandbox.out("rr")
    sandbox.inputs_done()
    args = ("rerank", "--candidates", str(pool), "--reward-model", str(rm), "--out", str(out), *RERANK_OPTS)
    t0 = time.monotonic()
    proc = sandbox.start(*args)
    target = None
    if phase == "pool":  # the candidates are stored, nothing scored yet
        wait_until(lambda: count(out / "candidates", "completion") >= 1, proc)
    elif phase == "scoring":
        target = rng.randint(1, N_CANDIDATES - 12)
        wait_until(lambda: count(out / "candidates", "score") >= target, proc)
    elif phase == "analysis":  # the @bo<n> models are written (one transaction): the analysis is next
        wait_until(lambda: count(out, "completion") >= 1, proc)
    else:
        delay = rng.uniform(0.2, 0.95) * seconds
        wait_until(lambda: time.monotonic() - t0 >= delay, proc, timeout=delay + 1)
    landed = sigkill(proc)
    scores_before = count(out / "candidates", "score")
    chaos.note(event="kill" if landed else "finished before the kill point", phase=phase, target=target,
               seconds=round(time.monotonic() - t0, 2), scores_stored=scores_before,
               virtual_completions=count(out, "completion"))
    if landed:
        chaos.kills += 1
    else:
        chaos.missed_kills += 1
        assert proc.returncode == 0, proc.captured[1][-2000:]
    done = sandbox.run(*args)
    assert done.returncode == 0, done.stderr
    now = scored_now(done.stdout)
    chaos.note(event="rerun", scored_now=now, expected=N_CANDIDATES - scores_before)
    # stored scores are reused: the rerun scores exactly the candidates the kill left unscored
    chaos.lost += max(0, now - (N_CANDIDATES - scores_before))
    assert now == N_CANDIDATES - scores_before
    got = rerank_outputs(out)
    assert close(got, ref) == []
    assert logical_duplicates(out) == [] and logical_duplicates(out / "candidates") == []
    assert temp_leftovers(out) == []
    stray = sandbox.stray_files()
    chaos.leaked += len(stray)
    assert stray == []




def test_kill_inside_the_analysis_write_leaves_no_temp_file(rerank_inputs, rerank_reference, sandbox, chaos):
    """Killed with bestofn/<model>__<scorer>.json complete in its temp file, not yet renamed: the rerun
    must finish the analysis and leave no temp file in bestofn/."""
    pool, rm = rerank_inputs
    ref, _ = rerank_reference
    out = sandbox.out("rr")
    sandbox.inputs_done()
    args = ("rerank", "--candidates", str(pool), "--reward-model", str(rm), "--out", str(out), *RERANK_OPTS)
    name = f"{pool.stem}__{rm.name}.json"
    killed = sandbox.run(name, *args, wrapper=KILL_IN_ATOMIC_WRITE)
    assert killed.returncode == -9, killed.stderr
    chaos.kills += 1
    left = temp_leftovers(out)
    chaos.note(event="kill inside atomic write", file=name, leftovers=left)
    assert left, "the kill point was not reached"
    done = sandbox.run(*args)
    assert done.returncode == 0, done.stderr
    assert scored_now(done.stdout) == 0
    assert close(rerank_outputs(out), ref) == []
    after = temp_leftovers(out)
    chaos.note(event="rerun", leftovers=after)
    assert after == [], f"temp files of the killed write are still there: {after}"


# ------------------------------------------------------------------------------------------ report
def _synthetic_runs(tmp: Path):
    try:
        from test_report import _synthetic_runs as make
    except ImportError:
        sys.path.insert(0, str(REPO / "tests"))
        from test_report import _synthetic_runs as make
    return make(tmp)[0]


def snapshot(d: Path) -> dict | None:
    if not d.exists():
        return None
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def beside(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


@pytest.fixture(scope="module")
def report_reference(tmp_path_factory, data_dir, libcache):
    """The runs, the uninterrupted report of both ("new") and of the first alone ("old"), and how long
    an uninterrupted report takes."""
    box = Sandbox(tmp_path_factory.mktemp("report_reference"), data_dir, libcache)
    runs = _synthetic_runs(box.root / "runs")
    new, old = box.out("new") / "report", box.out("old") / "report"
    t0 = time.monotonic()
    done = box.run("report", *map(str, runs), "--out", str(new), *REPORT_OPTS)
    seconds = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    done = box.run("report", str(runs[0]), "--out", str(old), *REPORT_OPTS)
    assert done.returncode == 0, done.stderr
    assert snapshot(new) != snapshot(old) and beside(new) == []
    return runs, new, old, seconds


@pytest.mark.parametrize("seed", seeds())
def test_sigkill_report_then_rerun_equals_uninterrupted(seed, report_reference, sandbox, chaos):
    runs, new, old, seconds = report_reference
    rng = random.Random(4000 + seed)
    target = sandbox.out("reports") / "report"
    over_previous = seed % 2 == 1
    if over_previous:
        shutil.copytree(old, target)
    sandbox.inputs_done()
    args = ("report", *map(str, runs), "--out", str(target), *REPORT_OPTS)
    delay = rng.uniform(0.3, 0.95) * seconds
    t0 = time.monotonic()
    proc = sandbox.start(*args)
    wait_until(lambda: time.monotonic() - t0 >= delay, proc, timeout=delay + 1)
    landed = sigkill(proc)
    state = snapshot(target)
    allowed = {"new": snapshot(new), **({"old": snapshot(old)} if over_previous else {"none": None})}
    which = next((k for k, v in allowed.items() if v == state), "a mix")
    chaos.note(event="kill" if landed else "finished before the kill point", over_previous=over_previous,
               at_s=round(delay, 2), target_state=which, beside=beside(target) if target.parent.exists() else [])
    if landed:
        chaos.kills += 1
    else:
        chaos.missed_kills += 1
        assert proc.returncode == 0, proc.captured[1][-2000:]
    assert which != "a mix", f"after the kill the target is neither report: {state and sorted(state)[:5]}"
    done = sandbox.run(*args)
    assert done.returncode == 0, done.stderr
    assert snapshot(target) == snapshot(new)
    assert beside(target) == []
    stray = sandbox.stray_files()
    chaos.leaked += len(stray)
    assert stray == []
