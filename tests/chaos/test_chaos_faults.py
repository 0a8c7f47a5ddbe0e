"""A fault-injecting loopback judge server (``harness.serve.build_app`` with ``Faults``), one fault kind at a
time at a moderate rate, then all kinds mixed (one run per seed), with call retries enabled.

Each run must complete, and every fault the server injected (its counters) must be accounted for on the
client side exactly once: as a retry (429, 500, timeout, truncated JSON, empty choices), as a failed call
(the 401 of ``echo_secret``, or a call whose retries ran out) or as a re-ask or parse failure of the judge
(``null_content``, ``out_of_range``):

    faults == calls.retries + calls.failed + re-asks + parse failures
    requests seen by the server == judge calls + calls.retries + re-asks

results.json's ``failures`` and ``calls.failed`` must match the stored judgments, an out-of-range verdict
(``Rating: [[42]]``) must end as a counted parse failure (never a score of 42), answers that arrived after
retries must equal a fault-free run's, and the API key (``api_key_env``, echoed back by ``echo_secret``)
must be in no file of the run directory: every byte of every file is searched, run.sqlite, cache.sqlite
and their -wal/-shm files included, every 50 ms while the run writes (the -wal files live only that long)
and once more at the end.
"""
from __future__ import annotations

import subprocess
import time

import pytest

from harness.fake import ScriptedBackend
from harness.serve import FAULT_KINDS, Faults, ServerThread, build_app

from .helpers import (SECRET, Sandbox, count, files_with, finish, judgment_values, logical_duplicates,
                      mt_bench_config, records, results, seeds)

pytestmark = pytest.mark.chaos

LIMIT = 10
TOTAL = 2 * LIMIT
RATE = 0.35
TRANSIENT = {"429", "500", "timeout", "truncated_json", "empty_choices"}  # retried by the call layer
PERMANENT = {"echo_secret"}  # a 401: not retried, counted as a failed call
PARSE = {"null_content", "out_of_range"}  # a 200 the judge cannot parse: re-asked, then a parse failure


def calls_settings(parse_retries: int = 2) -> dict:
    return {"concurrency": 4, "max_retries": 6, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 1.0,
            "parse_retries": parse_retries}


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory, data_dir, libcache):
    """key -> (status, value) of every judgment of the same run against a server without faults."""
    box = Sandbox(tmp_path_factory.mktemp("fault_free"), data_dir, libcache)
    app = build_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        cfg = mt_bench_config(box.root / "c.yaml", srv.base_url, LIMIT, calls=calls_settings())
        out = box.out("run")
        done = box.run("run", str(cfg), "--out", str(out))
    assert done.returncode == 0, done.stderr
    values = judgment_values(out)
    assert len(values) == TOTAL and all(s == "ok" for s, _ in values.values())
    return values


def faulty_run(sandbox, chaos, faults: Faults, parse_retries: int = 2):
    app = build_app(ScriptedBackend(), "judge", faults)
    with ServerThread(app) as srv:
        cfg = mt_bench_config(sandbox.root / "c.yaml", srv.base_url, LIMIT, calls=calls_settings(parse_retries))
        out = sandbox.out("run")
        sandbox.inputs_done()
        # search the run directory while the run writes too: the -wal files exist only until it ends
        proc = sandbox.start("run", str(cfg), "--out", str(out))
        t0, during, wal_seen = time.monotonic(), set(), set()
        while proc.poll() is None and time.monotonic() - t0 < 180:
            during.update(files_with(out, SECRET))
            wal_seen.update(p.name for p in out.glob("*-wal"))
            time.sleep(0.05)
        rc, stdout, stderr = finish(proc)
    done = subprocess.CompletedProcess(proc.args, rc, stdout, stderr)
    done.secret_during_run = sorted(during)
    counters = app.state.counters
    chaos.faults += counters["faults"]
    chaos.note(event="searched while running", wal_files=sorted(wal_seen), secret_in=done.secret_during_run)
    return done, out, counters


def account(done, out, counters, chaos, fault_free) -> dict:
    """The invariants every faulty run must satisfy; returns the client-side numbers."""
    assert done.returncode == 0, done.stderr
    res = results(out)
    calls, fail = res["calls"], res["failures"]["mt_bench"]
    js = records(out, "judgment")
    n = {"retries": calls["retries"], "failed": calls["failed"],
         "reasks": sum(j["attempts"] - 1 for j in js),
         "parse_failures": sum(j["parse_status"] == "parse_failure" for j in js),
         "errors": sum(j["parse_status"] == "error" for j in js)}
    leaked = sorted(set(files_with(out, SECRET)) | set(done.secret_during_run))
    printed = [name for name, text in (("stdout", done.stdout), ("stderr", done.stderr)) if SECRET in text]
    chaos.leaked += len(leaked) + len(printed)
    chaos.note(event="faulty run", injected=counters["faults"], by_kind=counters["by_kind"],
               requests=counters["requests"], **n)
    assert len(js) == TOTAL and count(out, "judgment") == TOTAL
    assert logical_duplicates(out) == []
    # every failure counted, and counted the same everywhere
    assert fail["judge_errors"] == n["errors"] == n["failed"]
    assert fail["judge_parse_failures"] == n["parse_failures"]
    assert fail["generation_errors"] == 0
    # every fault retried or counted, exactly once
    assert counters["faults"] == n["retries"] + n["failed"] + n["reasks"] + n["parse_failures"], (counters, n)
    assert counters["requests"] == TOTAL + n["retries"] + n["reasks"], (counters, n)
    assert calls["sent"] >= counters["requests"] - 1  # the client's count of attempts agrees with the server's
    # an out-of-range verdict is never a score
    for j in js:
        assert j["parse_status"] != "ok" or 1 <= j["value"] <= 10, j
        assert j["value"] != 42, j
    m = res["results"]["mt_bench"]["m1"]
    assert 1 <= m["score"] <= 10 and m["n_failed"] == n["parse_failures"]
    # retried answers are the answers: a judgment asked once equals the fault-free run's
    first_try = {key for key, j in zip(_keys(out), js) if j["attempts"] == 1 and j["parse_status"] == "ok"}
    got = judgment_values(out)
    assert {k: got[k] for k in first_try} == {k: fault_free[k] for k in first_try}
    # the key never reaches a file, echoed or not
    assert leaked == [] and printed == [], (leaked, printed)
    return n


def _keys(out) -> list[str]:
    from .helpers import _rows

    return [k for (k,) in _rows(out, "SELECT key FROM records WHERE kind='judgment' ORDER BY rowid")]


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_is_retried_or_counted(kind, sandbox, chaos, fault_free):
    # out_of_range without re-asks: each one must end as exactly one counted parse failure
    parse_retries = 0 if kind == "out_of_range" else 2
    faults = Faults(rate=RATE, kinds=(kind,), seed=7 + FAULT_KINDS.index(kind), timeout_sleep_s=1.3,
                    retry_after_s=0.02)
    done, out, counters = faulty_run(sandbox, chaos, faults, parse_retries)
    n = account(done, out, counters, chaos, fault_free)
    injected = counters["by_kind"].get(kind, 0)
    assert set(counters["by_kind"]) <= {kind}
    assert injected >= 1, f"the server injected no {kind} fault in {counters['requests']} requests"
    if kind in TRANSIENT:
        assert n["retries"] + n["failed"] == injected and n["reasks"] == n["parse_failures"] == 0
    elif kind in PERMANENT:
        assert n["failed"] == n["errors"] == injected and n["retries"] == 0
        # the server did echo the key it was sent (so the search above had something to find): redacted
        errors = [j["details"].get("error", "") for j in records(out, "judgment") if j["parse_status"] == "error"]
        assert errors and all("[REDACTED]" in e and "Incorrect API key" in e for e in errors), errors[:2]
    else:
        assert n["reasks"] + n["parse_failures"] == injected and n["retries"] == n["failed"] == 0
    if kind == "out_of_range":
        assert n["parse_failures"] == injected
    stray = sandbox.stray_files()
    chaos.leaked += len(stray)
    assert stray == []


@pytest.mark.parametrize("seed", seeds())
def test_all_fault_kinds_mixed(seed, sandbox, chaos, fault_free):
    faults = Faults(rate=0.3, kinds=FAULT_KINDS, seed=100 + seed, timeout_sleep_s=1.3, retry_after_s=0.02)
    done, out, counters = faulty_run(sandbox, chaos, faults)
    account(done, out, counters, chaos, fault_free)
    assert counters["faults"] >= 3
    stray = sandbox.stray_files()
    chaos.leaked += len(stray)
    assert stray == []
