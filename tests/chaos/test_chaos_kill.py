"""SIGKILL of `harness run` and of `harness judge` at random points, then reruns to completion.

Each seed kills the process once or twice (at points drawn from the seed: during start-up and generation, in the
middle of judging, near the end or in the aggregation), then reruns it to completion. The result must be
the one of an uninterrupted run in another directory (results.json metrics and failure counts, samples,
every judgment's value by key), with no duplicate record, no stored record lost, and a rerun that sends
only what was never answered: a SIGKILL costs at most the calls in flight. The judge is a loopback
`harness serve`-style server (``harness.serve.build_app`` with latency) whose counters are the truth
about what was sent. A last test kills `harness run` inside the atomic write of results.json (temp file
written, not yet renamed): the rerun must leave no temp file behind.

Kills of `harness rerank` and `harness report` are in ``test_chaos_rerank_report.py``; kills of
`harness train` are covered by ``tests/test_train_atomic.py`` (not repeated here).
"""
from __future__ import annotations

import random
import time

import pytest

from harness.fake import ScriptedBackend
from harness.serve import Faults, ServerThread, build_app

from .helpers import (KILL_IN_ATOMIC_WRITE, SECRET,
                      comparable, count, files_with, judgment_values, logical_duplicates, mt_bench_config,
                      ok_keys, seeds, sigkill, temp_leftovers, wait_until)

pytestmark = pytest.mark.chaos

LIMIT = 12  # MT-Bench questions
TOTAL = 2 * LIMIT  # judge calls: one per turn
CONC = 4  # calls.concurrency of the config


@pytest.fixture(scope="module")
def judge():
    app = build_app(ScriptedBackend(), "judge", Faults(latency_s=0.1))
    with ServerThread(app) as srv:
        srv.app = app
        yield srv


@pytest.fixture(scope="module")
def reference(judge, tmp_path_factory, data_dir, libcache):
    """An uninterrupted run of the same config in another directory."""
    from .helpers import Sandbox

    box = Sandbox(tmp_path_factory.mktemp("reference"), data_dir, libcache)
    cfg = mt_bench_config(box.root / "c.yaml", judge.base_url, LIMIT)
    out = box.out("run")
    sent = judge.app.state.counters["requests"]
    done = box.run("run", str(cfg), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert judge.app.state.counters["requests"] - sent == TOTAL
    assert count(out, "judgment", "ok") == TOTAL
    return comparable(out), judgment_values(out)


def kill_plan(seed: int, rng: random.Random) -> list[str]:
    fixed = {0: ["judging", "judging"], 1: ["startup", "end"], 2: ["judging", "end"]}
    if seed in fixed:
        return fixed[seed]
    return [rng.choice(["startup", "judging"]), rng.choice(["judging", "end"])]


def kill_and_resume(sandbox, counters, args, out, plan, rng, chaos) -> None:
    """Start ``harness ARGS``, SIGKILL it at each point of the plan, then rerun it to completion."""
    lost = 0
    for phase in plan:
        before = ok_keys(out)
        if len(before) >= TOTAL - 1 and phase != "startup":
            phase = "startup"  # nothing left to judge: a timed kill instead
        sent0 = counters["requests"]
        t0 = time.monotonic()
        proc = sandbox.start(*args)
        if phase == "startup":
            delay = rng.uniform(0.05, 1.0)
            wait_until(lambda: time.monotonic() - t0 >= delay, proc, timeout=delay + 1)
            target = None
        elif phase == "judging":
            left = TOTAL - len(before)
            target = len(before) + rng.randint(1, max(1, left - CONC - 1))
        else:
            target = TOTAL - rng.randint(0, 2)
        if target is not None:
            wait_until(lambda: count(out, "judgment") >= target, proc)
        landed = sigkill(proc)
        if not landed:
            assert proc.returncode == 0, (f"ended with {proc.returncode} before the kill point: "
                                          f"{proc.captured[1][-2000:]}")
        time.sleep(0.3)  # requests the killed client had sent reach the server's counters
        sent = counters["requests"] - sent0
        after = ok_keys(out)
        missing = len(before - after)
        new = len(after - before)
        waste = sent - new  # calls of this process with no stored record: in flight at the kill
        excess = max(0, sent - (TOTAL - len(before))) + max(0, waste - (CONC + 1))
        lost += missing + excess
        if landed:
            chaos.kills += 1
        else:
            chaos.missed_kills += 1
        chaos.note(event="kill" if landed else "finished before the kill point", phase=phase, target=target,
                   seconds=round(time.monotonic() - t0, 2), stored_before=len(before), stored_after=len(after),
                   sent=sent, in_flight_lost=waste)
        assert missing == 0, f"{missing} stored judgments disappeared after a kill"
        assert sent <= TOTAL - len(before), f"sent {sent} calls with {len(before)} of {TOTAL} already stored"
        assert waste <= CONC + 1, f"{waste} calls lost by one kill with concurrency {CONC}"
    before = ok_keys(out)
    sent0 = counters["requests"]
    done = sandbox.run(*args)
    assert done.returncode == 0, done.stderr
    sent = counters["requests"] - sent0
    after = ok_keys(out)
    chaos.note(event="rerun", stored_before=len(before), stored_after=len(after), sent=sent)
    lost += len(before - after) + max(0, sent - (TOTAL - len(before)))
    chaos.lost += lost
    assert sent <= TOTAL - len(before), f"the rerun sent {sent} calls with {len(before)} of {TOTAL} stored"
    assert before <= after


def check_complete(sandbox, out, reference, chaos) -> None:
    ref, ref_values = reference
    assert count(out, "instance") == LIMIT and count(out, "completion") == LIMIT
    assert count(out, "judgment") == TOTAL and count(out, "judgment", "ok") == TOTAL
    assert logical_duplicates(out) == []
    got = comparable(out)
    assert got["results"] == ref["results"]
    assert got["failures"] == ref["failures"]
    assert got["samples"] == ref["samples"]
    assert judgment_values(out) == ref_values
    leaked = files_with(out, SECRET) + sandbox.stray_files()
    chaos.leaked += len(leaked)
    assert leaked == [], f"secret in, or files outside the run directory: {leaked}"
    assert temp_leftovers(out) == []


@pytest.mark.parametrize("seed", seeds())
def test_sigkill_harness_run_then_rerun_equals_uninterrupted(seed, judge, reference, sandbox, chaos):
    rng = random.Random(1000 + seed)
    cfg = mt_bench_config(sandbox.root / "c.yaml", judge.base_url, LIMIT)
    out = sandbox.out("run")
    sandbox.inputs_done()
    args = ("run", str(cfg), "--out", str(out))
    kill_and_resume(sandbox, judge.app.state.counters, args, out, kill_plan(seed, rng), rng, chaos)
    check_complete(sandbox, out, reference, chaos)


@pytest.mark.parametrize("seed", seeds())
def test_sigkill_harness_judge_then_rerun_equals_uninterrupted(seed, judge, reference, sandbox, chaos):
    rng = random.Random(2000 + seed)
    cfg = mt_bench_config(sandbox.root / "c.yaml", judge.base_url, LIMIT)
    out = sandbox.out("run")
    sandbox.inputs_done()
    sent0 = judge.app.state.counters["requests"]
    gen = sandbox.run("generate", str(cfg), "--out", str(out))
    assert gen.returncode == 0, gen.stderr
    assert count(out, "completion", "ok") == LIMIT and count(out, "judgment") == 0
    assert judge.app.state.counters["requests"] == sent0  # generating calls no judge
    plan = {0: ["judging"], 1: ["startup", "judging"], 2: ["end"]}.get(seed) or kill_plan(seed, rng)[-1:]
    args = ("judge", str(cfg), "--out", str(out))
    kill_and_resume(sandbox, judge.app.state.counters, args, out, plan, rng, chaos)
    check_complete(sandbox, out, reference, chaos)




def test_kill_inside_an_atomic_write_leaves_no_temp_file_after_the_rerun(sandbox, chaos):
    """A kill between writing results.json's temp file and renaming it leaves the temp file; the rerun
    that completes the run must not leave it behind (a run directory would collect one hidden file per
    such kill, forever; samples/*.jsonl and every other atomic_write_text target behave the same)."""
    name = "results.json"
    cfg = mt_bench_config(sandbox.root / "c.yaml", None, 3)
    out = sandbox.out("run")
    sandbox.inputs_done()
    killed = sandbox.run(name, "run", str(cfg), "--out", str(out), wrapper=KILL_IN_ATOMIC_WRITE)
    assert killed.returncode == -9, killed.stderr
    chaos.kills += 1
    left = temp_leftovers(out)
    chaos.note(event="kill inside atomic write", file=name, leftovers=left)
    assert left, "the kill point was not reached"
    done = sandbox.run("run", str(cfg), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "results.json").exists()
    after = temp_leftovers(out)
    chaos.note(event="rerun", leftovers=after)
    assert after == [], f"temp files of the killed write are still in the run directory: {after}"
