"""Child processes that die with the process that started them (the judge server of a run).

A child started with plain ``subprocess.Popen`` outlives its parent: on SIGKILL of a run the judge
server would be re-parented to PID 1 and keep its port and its model in memory. The pieces here:

- the parent starts the child with :func:`popen_tied` (its own process group, ``--parent-pid``-style
  bookkeeping, stopped at interpreter exit) and stops it with :func:`stop_process_group`;
- the child calls :func:`tie_to_parent` first thing: on Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, and on
  every platform a watchdog thread that ends the process when its parent pid changes (which also closes
  the race of a parent that died before the child got to call prctl);
- :func:`install_sigterm_handler` turns SIGTERM into ``SystemExit(143)`` so that ``finally`` blocks and
  ``atexit`` hooks (which stop the children) run when a run is terminated.

PR_SET_PDEATHSIG fires when the parent *thread* that forked the child exits, not the parent process, so
it is only asked for when the child is started from the main thread; a child started from another
thread relies on the watchdog alone.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
SIGTERM_EXIT_CODE = 128 + int(signal.SIGTERM)  # 143, what a shell reports for a process ended by SIGTERM

_children: list[subprocess.Popen] = []
_children_lock = threading.Lock()
_atexit_registered = False


# -- in the parent

def _raise_system_exit(signum, frame):  # noqa: ARG001
    raise SystemExit(SIGTERM_EXIT_CODE)


def install_sigterm_handler() -> bool:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread, so ``finally`` blocks and atexit hooks run.

    Returns False (and does nothing) when called outside the main thread, where Python cannot set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _raise_system_exit)
    return True


def pdeathsig_usable() -> bool:
    """Whether a child started now may ask for PR_SET_PDEATHSIG: Linux, and forked from the main thread."""
    return sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()


def popen_tied(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session/process group, stopped (with its group) at interpreter exit.

    The child itself must call :func:`tie_to_parent` to die on SIGKILL of this process.
    """
    global _atexit_registered
    if os.name == "posix":
        kwargs.setdefault("start_new_session", True)
    proc = subprocess.Popen(cmd, **kwargs)
    # the child leads a process group of its own: signals go to the whole group
    proc.own_group = bool(kwargs.get("start_new_session") or kwargs.get("process_group") == 0)
    with _children_lock:
        _children.append(proc)
        if not _atexit_registered:
            atexit.register(stop_all_children)
            _atexit_registered = True
    return proc


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        # only a group the child leads (popen_tied), never ours. A group's id is not reused while any
        # member lives, so this is safe even after the leader was reaped.
        if getattr(proc, "own_group", False) and hasattr(os, "killpg") and proc.pid != os.getpgid(0):
            os.killpg(proc.pid, sig)
            return
    proc.send_signal(sig)  # no-op once the child was reaped


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """SIGTERM the child's process group, wait up to ``timeout_s``, then SIGKILL it. Returns the exit code."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
    else:  # the leader is gone; anything left in its group goes too
        _signal_group(proc, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
    with _children_lock:
        with contextlib.suppress(ValueError):
            _children.remove(proc)
    return proc.returncode


def stop_all_children(timeout_s: float = 10.0) -> None:
    """Stop every child started with :func:`popen_tied` that is still registered (an atexit hook)."""
    with _children_lock:
        procs = list(_children)
    for p in procs:
        with contextlib.suppress(Exception):
            stop_process_group(p, timeout_s)


# -- in the child

def set_pdeathsig(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent thread exits. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _end_self(grace_s: float) -> None:
    """Ask this process to stop as SIGTERM would, and make sure it is gone ``grace_s`` later."""
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(SIGTERM_EXIT_CODE)


def tie_to_parent(parent_pid: int | None = None, *, pdeathsig: bool = True, poll_s: float = 0.5,
                  grace_s: float = 5.0) -> None:
    """End this process when ``parent_pid`` (default: the current parent) exits.

    Call it first thing in a child. With ``pdeathsig`` (Linux) the kernel sends SIGTERM at once; the
    watchdog thread, on every platform, notices the parent pid change within ``poll_s``, sends this
    process SIGTERM, and hard-exits ``grace_s`` later if the graceful shutdown hangs. A parent that is
    already gone (the race before prctl) ends this process here with exit code 1.
    """
    expected = os.getppid() if parent_pid is None else int(parent_pid)
    if pdeathsig:
        set_pdeathsig(signal.SIGTERM)
    if os.getppid() != expected:
        sys.stderr.write(f"harness: parent process {expected} is gone; exiting\n")
        sys.stderr.flush()
        os._exit(1)

    def watch():
        while os.getppid() == expected:
            time.sleep(poll_s)
        sys.stderr.write(f"harness: parent process {expected} is gone; exiting\n")
        sys.stderr.flush()
        _end_self(grace_s)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
