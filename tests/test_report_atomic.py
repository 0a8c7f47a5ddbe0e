"""`harness report` replaces its target in one step: a report killed at any moment leaves the previous
complete report (or the new complete one) at the target, and the next run removes what it left behind."""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reports.report import clean_leftovers, make_report
from test_report import _synthetic_runs  # the run directories test_report.py builds

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
OPTS = ["--bootstrap", "100", "--baseline", "base", "--max-instances", "5"]

# `harness report` that SIGKILLs itself at a named point of the swap (argv[1]), then the CLI arguments
KILL_AT = r'''
import os, signal, sys
import reports.publish as pub
import reports.report as r

def die():
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[1]
if point == "before_swap":  # the new report is complete in its temp folder
    r.swap_into_place = lambda tmp, final: die()
elif point == "after_exchange":  # swapped; the previous report not yet removed
    exchange = pub.rename_exchange
    def _exchange(a, b):
        exchange(a, b)
        die()
    pub.rename_exchange = _exchange
elif point == "between_renames":  # the fallback without renameat2: old -> trash done, new -> target not yet
    pub.rename_exchange = lambda a, b: False
    rename = os.rename
    def _rename(a, b):
        rename(a, b)
        if str(b).endswith(".old"):
            die()
    os.rename = _rename
from harness.cli import main
sys.exit(main(sys.argv[2:]))
'''


def _cmd(runs, target) -> list[str]:
    return ["report", *map(str, runs), "--out", str(target), *OPTS]


def _start(runs, target, kill_at: str | None = None) -> subprocess.Popen:
    pre = [sys.executable, "-c", KILL_AT, kill_at] if kill_at else [sys.executable, "-m", "harness.cli"]
    return subprocess.Popen(pre + _cmd(runs, target), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _snapshot(d: Path) -> dict[str, str] | None:
    """relative path -> sha256 of every file below d; None if d does not exist."""
    if not d.exists():
        return None
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two complete reports into one target: "old" (run_a alone) and "new" (run_a + run_b); their
    snapshots, and how long an uninterrupted `harness report` takes."""
    tmp = tmp_path_factory.mktemp("atomic")
    runs, _ = _synthetic_runs(tmp)
    target = tmp / "reports" / "report"
    args = {"old": runs[:1], "new": runs}
    make_report(args["old"], target, baseline="base", B=100, max_instances=5)
    snaps = {"old": _snapshot(target)}
    t0 = time.monotonic()
    proc = _start(args["new"], target)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    seconds = time.monotonic() - t0
    snaps["new"] = _snapshot(target)
    assert snaps["old"] != snaps["new"] and "report.html" in snaps["old"] and "report.html" in snaps["new"]
    assert "plots/best_of_n.png" in snaps["new"] and "plots/best_of_n.png" not in snaps["old"]
    assert _leftovers(target) == []  # a complete run leaves nothing beside its target
    return target, args, snaps, seconds


@pytest.fixture()
def reports(built, tmp_path):
    """A fresh target holding the "new" report (a copy), for one test."""
    built_target, args, snaps, seconds = built
    target = tmp_path / "reports" / "report"
    shutil.copytree(built_target, target)
    assert _snapshot(target) == snaps["new"]
    return target, args, snaps, seconds


def _state(target: Path, snaps: dict) -> str:
    snap = _snapshot(target)
    for name, s in snaps.items():
        if snap == s:
            return name
    missing = sorted(set(snaps["new"]) - set(snap or {}))
    raise AssertionError(f"{target} is neither the previous nor the new complete report "
                         f"({'missing' if snap is None else f'{len(snap)} files, lacking {missing[:5]}'}); "
                         f"beside it: {_leftovers(target)}")


def test_report_killed_at_random_times_leaves_a_complete_report(reports):
    target, args, snaps, seconds = reports
    state = "new"
    for seed in range(4):  # one random moment in each quarter of the late part of a run (imports come first)
        other = "old" if state == "new" else "new"
        proc = _start(args[other], target)
        time.sleep(random.Random(seed).uniform(0.45 + 0.15 * seed, 0.6 + 0.15 * seed) * seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        state = _state(target, snaps)  # the previous complete report or the new one, never a mix
    # the next run removes what the killed ones left and puts its own report in place
    other = "old" if state == "new" else "new"
    proc = _start(args[other], target)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert _state(target, snaps) == other
    assert _leftovers(target) == []


@pytest.mark.parametrize("point", ["before_swap", "after_exchange", "between_renames"])
def test_report_killed_during_the_swap(reports, point, tmp_path):
    from harness.paths import rename_exchange as _exchange

    target, args, snaps, _ = reports
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    if point == "after_exchange" and not _exchange(tmp_path / "x", tmp_path / "y"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this system or file system")
    proc = _start(args["old"], target, kill_at=point)
    assert proc.wait(timeout=120) == -signal.SIGKILL, proc.stderr.read()
    assert _leftovers(target)  # the killed run left its temp folder (and lock file) beside the target
    if point == "between_renames":
        # only where renameat2 is missing: the target is briefly absent, the next run puts the previous back
        assert not target.exists()
    else:
        assert _state(target, snaps) == {"before_swap": "new", "after_exchange": "old"}[point]
    removed = clean_leftovers(target)
    assert removed and _leftovers(target) == []
    assert _state(target, snaps) == {"before_swap": "new", "after_exchange": "old", "between_renames": "new"}[point]


def test_a_running_report_is_not_cleaned_up_by_another(reports):
    """The lock file tells a killed run's leftovers from a run still building."""
    from reports.publish import lock_path as _lock, new_build_dir as _new_build_dir

    target, _, snaps, _ = reports
    fd, tmp = _new_build_dir(target)
    try:
        (tmp / "partial.txt").write_text("building")
        assert clean_leftovers(target) == [] and tmp.is_dir()
    finally:
        os.close(fd)  # the builder "dies": its flock goes with it
    assert clean_leftovers(target) == [tmp] and not tmp.exists() and not _lock(tmp).exists()
    # folders of older versions (mkdtemp ".<name>.tmp-*") are removed too
    old_style = target.with_name(f".{target.name}.tmp-abc123")
    old_style.mkdir()
    assert clean_leftovers(target) == [old_style]
    assert _state(target, snaps) == "new"
    # a dead run's leftovers for a neighbouring target ("report-x") are that target's business
    neighbour = target.with_name(".report-tmp-report-x-0123456789ab.old")
    neighbour.mkdir()
    (neighbour / "report.html").write_text("x")
    assert clean_leftovers(target) == [] and neighbour.is_dir()
    assert clean_leftovers(target.with_name("report-x")) == [neighbour]
    assert (target.with_name("report-x") / "report.html").read_text() == "x"  # restored: its target was missing


def test_existing_target_must_be_a_report_folder(tmp_path):
    runs, _ = _synthetic_runs(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="folder without report.html"):
        make_report(runs, tmp_path / "docs", B=100)
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        make_report(runs, tmp_path / "file", B=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "file", "run_a", "run_b"]


def test_report_files_and_folders_get_the_umask_mode(tmp_path, monkeypatch):
    import reports.report as report

    runs, _ = _synthetic_runs(tmp_path)
    old = os.umask(0o027)
    try:
        path = make_report(runs[:1], tmp_path / "out", B=100, max_instances=3)
    finally:
        os.umask(old)
    out = path.parent
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert all(m == (0o750 if (tmp_path / p).is_dir() else 0o640) for p, m in modes.items()), \
        {p: oct(m) for p, m in modes.items()}
    # a symlinked target: the report replaces the folder the link points to, the link stays; and the
    # fallback swap (two renames, where renameat2 is missing) ends with the new report and no leftovers
    (tmp_path / "link").symlink_to(out)
    import reports.publish

    monkeypatch.setattr(reports.publish, "rename_exchange", lambda a, b: False)
    make_report(runs, tmp_path / "link", B=100, max_instances=3)
    assert (tmp_path / "link").is_symlink() and (out / "plots" / "best_of_n.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out", "run_a", "run_b"]
