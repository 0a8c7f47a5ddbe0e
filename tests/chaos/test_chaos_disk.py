"""A full disk and a read-only disk, on small tmpfs mounts (root only; skipped with the reason otherwise).

Full disk: a run into a 2 MiB tmpfs that is nearly full (a filler file leaves each of several amounts of
free space, so the disk fills while different files are written: the run store, the call cache, ...)
must end with exit code 2 and one clear error line naming the file, no traceback; after the tmpfs is
made bigger (remounted at 64 MiB) the rerun resumes and gives the uninterrupted run's results.

Read-only disk: a finished run directory on a tmpfs remounted read-only, and a new --out on it, must end
with exit code 2 and one clear error line naming the path, no traceback. Every mount is unmounted in a
``finally``.
"""
from __future__ import annotations

import pytest

from .helpers import (comparable, count, error_lines, is_mounted, judgment_values, logical_duplicates,
                      mt_bench_config, remount, tmpfs)

pytestmark = pytest.mark.chaos

LIMIT = 20
# free KiB left on the 2 MiB tmpfs; with LIMIT 20 the disk fills while opening the run store (96), opening the
# call cache (144), writing it during generation (216), writing the run store (320), committing the judgments
# (380; the calls answered together commit together) or writing the samples file (400)
FREE_KB = [96, 144, 216, 320, 380, 400]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, libcache):
    from .helpers import Sandbox

    box = Sandbox(tmp_path_factory.mktemp("disk_reference"), data_dir, libcache)
    cfg = mt_bench_config(box.root / "c.yaml", None, LIMIT)
    out = box.out("run")
    done = box.run("run", str(cfg), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return comparable(out), judgment_values(out)


def one_clear_error(done, names_under) -> str:
    """Exit code 2, no traceback, exactly one `harness: error:` line, naming a path under names_under."""
    err = done.stderr
    assert "Traceback" not in err, f"a traceback instead of one error line (exit code {done.returncode}):\n{err[-3000:]}"
    lines = error_lines(err)
    assert done.returncode == 2, f"exit code {done.returncode}; stderr:\n{err[-3000:]}"
    assert len(lines) == 1, err
    assert str(names_under) in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("free_kb", FREE_KB)
def test_full_disk_is_one_clear_error_and_a_bigger_disk_resumes(free_kb, sandbox, chaos, reference):
    mnt = sandbox.root / "mnt"
    cfg = mt_bench_config(sandbox.root / "c.yaml", None, LIMIT)
    out = mnt / "run"
    sandbox.outputs.append(mnt)
    try:
        with tmpfs(mnt, "2m"):
            (mnt / "filler").write_bytes(b"\0" * ((2048 - free_kb) * 1024))
            sandbox.inputs_done()
            full = sandbox.run("run", str(cfg), "--out", str(out))
            chaos.note(event="full disk", free_kb=free_kb, exit_code=full.returncode,
                       last_error=(error_lines(full.stderr) or full.stderr.strip().splitlines() or [""])[-1])
            chaos.faults += 1
            line = one_clear_error(full, out)
            assert "full" in line or "space" in line, line
            remount(mnt, "size=64m")
            done = sandbox.run("run", str(cfg), "--out", str(out))
            assert done.returncode == 0, done.stderr
            ref, ref_values = reference
            assert count(out, "judgment", "ok") == 2 * LIMIT and logical_duplicates(out) == []
            got = comparable(out)
            assert got == ref
            assert judgment_values(out) == ref_values
            stray = sandbox.stray_files()
            chaos.leaked += len(stray)
            assert stray == []
    finally:
        assert not is_mounted(mnt)


@pytest.mark.parametrize("case", ["finished run", "new run directory"])
def test_read_only_disk_is_one_clear_error(case, sandbox, chaos):
    mnt = sandbox.root / "mnt"
    cfg = mt_bench_config(sandbox.root / "c.yaml", None, 3)
    sandbox.outputs.append(mnt)
    try:
        with tmpfs(mnt, "16m"):
            out = mnt / "run"
            if case == "finished run":
                first = sandbox.run("run", str(cfg), "--out", str(out))
                assert first.returncode == 0, first.stderr
            else:
                out = mnt / "new"
            remount(mnt, "ro")
            sandbox.inputs_done()
            done = sandbox.run("run", str(cfg), "--out", str(out))
            chaos.faults += 1
            chaos.note(event="read-only disk", case=case, exit_code=done.returncode,
                       last_stderr_line=(done.stderr.strip().splitlines() or [""])[-1])
            one_clear_error(done, out)
    finally:
        assert not is_mounted(mnt)
