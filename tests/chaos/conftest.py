"""What the chaos tests did, and a one-line summary at the end of the session.

Every chaos test takes the ``chaos`` fixture (a :class:`Tally`) and counts on it what it did: kills
performed, faults the servers injected (read from their counters), bad inputs tried, finished work
lost and secrets/stray files leaked. The tallies are written to ``<basetemp>/chaos_records.json``
(or to ``$HARNESS_CHAOS_RECORDS``) and summed into one line:

    chaos: N kills survived, M faults injected, K bad inputs, 0 lost, 0 leaked

"kills survived" counts the kills of passed tests only; the line adds the kills of failed tests when
there are any. ``HARNESS_CHAOS_SEEDS`` (default 3) sets how many seeds the randomized scenarios run.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

_TALLIES: list[dict] = []
_RAN: list[str] = []


@dataclass
class Tally:
    test: str
    kills: int = 0  # SIGKILLs that landed while the process was running
    missed_kills: int = 0  # kill points the process finished before reaching
    faults: int = 0  # faults the loopback servers injected (their counters)
    bad_inputs: int = 0
    lost: int = 0  # finished records lost or finished calls sent again
    leaked: int = 0  # files holding a secret, files written outside the output directory
    notes: list = field(default_factory=list)
    outcome: str = "unknown"

    def note(self, **what) -> None:
        """Record one event (also printed: ``pytest -s`` shows the log as it happens)."""
        self.notes.append(what)
        print(f"[chaos] {self.test}: {json.dumps(what, default=str, sort_keys=True)}")


def pytest_configure(config):
    config.addinivalue_line("markers", "chaos: chaos tests (kills, faults, full disks, bad input); "
                                       "HARNESS_CHAOS_SEEDS sets the number of seeds")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    tally = getattr(item, "_chaos_tally", None)
    if tally is not None and (rep.when == "call" or rep.failed):
        if rep.failed:
            tally.outcome = "failed"
        elif rep.skipped:
            tally.outcome = "skipped"
        elif tally.outcome == "unknown":
            tally.outcome = "passed"


@pytest.fixture
def chaos(request) -> Tally:
    tally = Tally(request.node.nodeid)
    request.node._chaos_tally = tally
    _RAN.append(request.node.nodeid)
    yield tally
    _TALLIES.append(tally)


@pytest.fixture(scope="session")
def libcache(tmp_path_factory):
    """Caches of third-party libraries (matplotlib, Hugging Face) of the children: outside every sandbox."""
    return tmp_path_factory.mktemp("libcache")


@pytest.fixture
def sandbox(tmp_path, data_dir, libcache):
    from .helpers import Sandbox

    return Sandbox(tmp_path / "sandbox", data_dir, libcache)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RAN:
        return
    rows = [asdict(t) for t in _TALLIES]
    path = None
    if os.environ.get("HARNESS_CHAOS_RECORDS"):
        path = Path(os.environ["HARNESS_CHAOS_RECORDS"])
    elif hasattr(config, "_tmp_path_factory"):
        path = config._tmp_path_factory.getbasetemp() / "chaos_records.json"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2, default=str))
    passed = [r for r in rows if r["outcome"] == "passed"]
    survived = sum(r["kills"] for r in passed)
    killed = sum(r["kills"] for r in rows)
    line = (f"chaos: {survived} kills survived, {sum(r['faults'] for r in rows)} faults injected, "
            f"{sum(r['bad_inputs'] for r in rows)} bad inputs, {sum(r['lost'] for r in rows)} lost, "
            f"{sum(r['leaked'] for r in rows)} leaked")
    if killed != survived:
        line += f" ({killed - survived} kills in failed tests)"
    failed = [r["test"] for r in rows if r["outcome"] == "failed"]
    terminalreporter.write_sep("-", "chaos summary")
    terminalreporter.write_line(line)
    if failed:
        terminalreporter.write_line(f"chaos: {len(failed)} failed: {', '.join(failed)}")
    if path is not None:
        terminalreporter.write_line(f"chaos: records in {path}")
