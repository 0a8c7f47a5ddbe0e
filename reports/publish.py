"""Publishing a report folder in one step: built beside the target, swapped into place.

The report is built in ``.report-tmp-<name>-<token>`` beside the target and swapped into place
at once (``harness.paths.rename_exchange``; elsewhere two renames, undone by the next run if it
was killed between them): the target always holds the previous complete report or the new one,
never a mix. A killed run's leftovers are removed by the next run into the same target; a run
still building (it holds an flock on ``<temp folder>.lock``) is left alone.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from harness.paths import rename_exchange

try:
    import fcntl
except ImportError:  # not POSIX: leftovers of killed runs are kept
    fcntl = None

TMP_PREFIX = ".report-tmp-"
_TOKEN_HEX = 12  # secrets.token_hex(6)


def _tmp_prefix(final: Path) -> str:
    return f"{TMP_PREFIX}{final.name}-"


def _leftover_re(final: Path) -> re.Pattern:
    """Names of the temp folder, its lock file and its trash folder, for this target only."""
    return re.compile(re.escape(_tmp_prefix(final)) + f"[0-9a-f]{{{_TOKEN_HEX}}}" + r"(?:\.lock|\.old)?")


def lock_path(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + ".lock")


def _trash(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + ".old")


def unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_target(final: Path) -> None:
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise ValueError(f"--out: {final} exists and is not a folder")
    if final.is_dir() and not (final / "report.html").exists() and any(final.iterdir()):
        raise ValueError(f"--out: {final} is a folder without report.html; a report replaces its folder as a "
                         f"whole, so give a new or empty folder (or a previous report's)")


def new_build_dir(final: Path) -> tuple[int, Path]:
    """A fresh ``.report-tmp-<name>-<token>`` folder beside ``final`` (mode 0o777 less the umask, like any new
    folder) and the fd of its lock file, flocked for as long as the build runs."""
    for _ in range(100):
        tmp = final.with_name(_tmp_prefix(final) + secrets.token_hex(_TOKEN_HEX // 2))
        lock = lock_path(tmp)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # a cleaner may have removed the lock file before we locked it: start over
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
        try:
            os.mkdir(tmp, 0o777)
        except BaseException:
            unlink_quiet(lock)
            os.close(fd)
            raise
        return fd, tmp
    raise FileExistsError(f"{final.parent}: no free name for a temporary report folder")


def _lock_is_free(lock: Path) -> bool:
    """True if no live process holds ``lock`` (or it does not exist)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the lock if we got it
    return True


def clean_leftovers(final: Path) -> list[Path]:
    """Remove what killed runs into ``final`` left beside it: their temp folders, and restore the previous
    report if a run was killed between the two renames of the fallback swap. Returns the leftover folders
    removed or restored."""
    final = Path(final)
    ours = _leftover_re(final)
    bases = set()
    for entry in final.parent.iterdir():
        name = entry.name
        if ours.fullmatch(name):
            for suffix in (".lock", ".old"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            bases.add(final.parent / name)
        elif name.startswith(f".{final.name}.tmp-") and entry.is_dir():  # older versions' mkdtemp folders
            bases.add(entry)
    removed = []
    for tmp in sorted(bases):
        if not _lock_is_free(lock_path(tmp)):
            continue  # a live run is building there
        if _trash(tmp).is_dir() and not final.exists():
            os.rename(_trash(tmp), final)  # killed between "old -> trash" and "new -> final": undo
            removed.append(_trash(tmp))
        for p in (tmp, _trash(tmp)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        unlink_quiet(lock_path(tmp))
    return removed


def swap_into_place(tmp: Path, final: Path) -> None:
    """Make the complete report in ``tmp`` the one at ``final``; the previous one is removed afterwards."""
    if not final.exists():
        os.rename(tmp, final)  # atomic; fails if a non-empty folder appeared there meanwhile
        return
    if rename_exchange(tmp, final):
        old = tmp  # the previous report now lies at the temp path
    else:  # two renames; a kill between them is undone by clean_leftovers on the next run
        old = _trash(tmp)
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            try:
                os.rename(old, final)  # put the previous report back
            except OSError:
                pass  # then it stays in the trash folder, which the next run restores
            raise
    shutil.rmtree(old, ignore_errors=True)
