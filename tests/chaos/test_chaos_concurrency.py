"""Two `harness run` processes on one --out at the same moment: one holds the run directory, the other
fails at once (exit code 2, "in use by another harness process"), and the judge server sees every call
exactly once."""
from __future__ import annotations

import time

import pytest

from harness.fake import ScriptedBackend
from harness.serve import Faults, ServerThread, build_app

from .helpers import (SECRET, count, error_lines, files_with, finish, logical_duplicates, mt_bench_config, results,
                      seeds)

pytestmark = pytest.mark.chaos

LIMIT = 6
TOTAL = 2 * LIMIT


@pytest.mark.parametrize("seed", seeds()[:2])
def test_two_runs_on_one_directory(seed, sandbox, chaos):
    app = build_app(ScriptedBackend(), "judge", Faults(latency_s=0.2))
    with ServerThread(app) as srv:
        cfg = mt_bench_config(sandbox.root / "c.yaml", srv.base_url, LIMIT,
                              calls={"concurrency": 2, "max_retries": 2, "backoff_base_s": 0.01, "timeout_s": 10})
        out = sandbox.out("run")
        sandbox.inputs_done()
        args = ("run", str(cfg), "--out", str(out))
        t0 = time.monotonic()
        procs = [sandbox.start(*args), sandbox.start(*args)]
        if seed % 2:  # the other order of arrival
            procs.reverse()
        ended: dict[int, float] = {}
        outcomes = {}
        while len(ended) < 2 and time.monotonic() - t0 < 120:
            for i, p in enumerate(procs):
                if i not in ended and p.poll() is not None:
                    ended[i] = time.monotonic() - t0
                    outcomes[i] = finish(p)
            time.sleep(0.01)
        for p in procs:
            if p.poll() is None:
                p.kill()
        assert len(ended) == 2, "a run did not finish within 120 s"
        requests = app.state.counters["requests"]
    codes = {i: outcomes[i][0] for i in outcomes}
    chaos.note(event="two runs", exit_codes=codes, seconds={i: round(s, 2) for i, s in ended.items()},
               judge_requests=requests)
    assert sorted(codes.values()) == [0, 2], outcomes
    loser = next(i for i, c in codes.items() if c == 2)
    winner = 1 - loser
    _, _, err = outcomes[loser]
    assert "in use by another harness process" in err and str(out) in err
    assert len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert ended[loser] < ended[winner]  # at once, not after waiting for the other
    assert ended[winner] - ended[loser] > 0.5
    # the judge saw each call once; the run is complete
    assert requests == TOTAL
    assert count(out, "judgment", "ok") == TOTAL and logical_duplicates(out) == []
    assert results(out)["results"]["mt_bench"]["m1"]["n"] == LIMIT
    leaked = files_with(out, SECRET) + sandbox.stray_files()
    chaos.leaked += len(leaked)
    assert leaked == []
