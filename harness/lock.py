"""One process per run directory: two runs on one directory would pay for every call twice.

An advisory ``flock`` on ``<run dir>/.lock``: released by the kernel when the holder exits,
however it exits (a SIGKILL leaves no stale lock to clean up).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class RunLocked(ValueError):
    pass


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(f"{self.dir}: in use by another harness process (pid {holder}); wait for it to "
                            f"finish or give another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
