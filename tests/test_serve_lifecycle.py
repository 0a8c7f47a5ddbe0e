"""The judge server a run starts dies with the run (SIGKILL, SIGTERM) and frees its port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# A stand-in for `harness run`: starts the judge server, reports its pid and port, then waits to be killed.
PARENT = textwrap.dedent("""
    import sys, time
    from harness.serve import start_server_process

    model, mode = sys.argv[1], sys.argv[2]
    if mode == "handler":
        from harness.lifecycle import install_sigterm_handler
        install_sigterm_handler()
    proc, url = start_server_process(model, "tiny", batch_size=2, timeout_s=180, log_path=sys.argv[3])
    port = url.rsplit(":", 1)[1].split("/")[0]
    try:
        print(proc.pid, port, flush=True)
        while True:
            time.sleep(0.1)
    finally:
        if mode == "handler":
            from harness.serve import stop_server_process
            stop_server_process(proc)
""")


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped counts as gone: it holds no memory or port)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return sys.platform.startswith("linux") is False


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def health(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_parent(tmp_path: Path, model: Path, mode: str) -> tuple[subprocess.Popen, int, int]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    log = tmp_path / "serve.log"
    parent = subprocess.Popen([sys.executable, str(script), str(model), mode, str(log)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = parent.stdout.readline()
    if not line:
        parent.wait(timeout=30)
        pytest.fail(f"parent failed: {parent.stderr.read()}\n{log.read_text() if log.exists() else ''}")
    pid, port = map(int, line.split())
    return parent, pid, port


def _kill_leftover(pid: int) -> None:
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig, mode", [(signal.SIGKILL, "plain"), (signal.SIGTERM, "plain"),
                                       (signal.SIGTERM, "handler")],
                         ids=["sigkill", "sigterm-default", "sigterm-handler"])
def test_server_dies_with_its_parent_and_frees_its_port(tmp_path, tiny_model_dir, sig, mode):
    parent, child, port = start_parent(tmp_path, tiny_model_dir, mode)
    try:
        assert alive(child) and health(port)
        parent.send_signal(sig)
        parent.wait(timeout=15)
        assert wait_gone(child, 10), f"judge server {child} outlived its parent ({sig.name}, {mode})"
        deadline = time.time() + 5
        while not port_free(port) and time.time() < deadline:
            time.sleep(0.05)
        assert port_free(port), f"port {port} still taken after the server died"
        if mode == "handler":  # the SIGTERM handler ran the finally block: a clean exit, code 143
            assert parent.returncode == 143
    finally:
        _kill_leftover(child)
        if parent.poll() is None:
            parent.kill()


def test_stop_server_process_stops_the_group_and_frees_the_port(tiny_model_dir, tmp_path):
    from harness.serve import start_server_process, stop_server_process

    proc, url = start_server_process(str(tiny_model_dir), "tiny", batch_size=2, timeout_s=180,
                                     log_path=str(tmp_path / "serve.log"))
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        assert health(port)
        assert os.getpgid(proc.pid) == proc.pid  # its own process group, apart from ours
        assert os.getpgid(proc.pid) != os.getpgid(0)
        t0 = time.time()
        stop_server_process(proc, timeout_s=10)
        assert proc.poll() is not None and time.time() - t0 < 15
        assert port_free(port)
        stop_server_process(proc)  # stopping twice is harmless
    finally:
        _kill_leftover(proc.pid)


# The parent-pid watchdog alone (the non-Linux path, and the path for servers started from a thread).
WATCHED = textwrap.dedent("""
    import os, subprocess, sys, time
    if sys.argv[1] == "child":
        from harness.lifecycle import tie_to_parent
        tie_to_parent(int(sys.argv[2]), pdeathsig=False, poll_s=0.1)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    else:
        child = subprocess.Popen([sys.executable, __file__, "child", str(os.getpid())], stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline().strip() == "ready"
        print(child.pid, flush=True)
        while True:
            time.sleep(0.1)
""")


def test_parent_pid_watchdog_without_pdeathsig(tmp_path):
    script = tmp_path / "watched.py"
    script.write_text(WATCHED)
    parent = subprocess.Popen([sys.executable, str(script), "parent"], env=_env(), stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()
        parent.wait(timeout=10)
        assert wait_gone(child, 10)
    finally:
        _kill_leftover(child)
        if parent.poll() is None:
            parent.kill()


def test_child_of_a_parent_already_gone_exits_at_once(tmp_path):
    """The race prctl cannot close: the parent died before the child asked to die with it."""
    script = tmp_path / "late.py"
    script.write_text("import sys, time\nfrom harness.lifecycle import tie_to_parent\n"
                      "tie_to_parent(int(sys.argv[1]))\ntime.sleep(30)\n")
    # a parent pid that is not ours: as if the real parent had already died and we were re-parented
    t0 = time.time()
    r = subprocess.run([sys.executable, str(script), str(os.getpid() + 10_000_000)], env=_env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "is gone; exiting" in r.stderr and time.time() - t0 < 20


def test_server_started_from_a_thread_outlives_the_thread(tiny_model_dir, tmp_path):
    """PR_SET_PDEATHSIG fires when the forking *thread* exits: a server started from a worker thread must
    not die when that thread ends while the process lives on."""
    import threading

    from harness.serve import start_server_process, stop_server_process

    box = {}

    def start():
        box["proc"], box["url"] = start_server_process(str(tiny_model_dir), "tiny", batch_size=2, timeout_s=180,
                                                       log_path=str(tmp_path / "serve.log"))

    t = threading.Thread(target=start)
    t.start()
    t.join()
    proc = box["proc"]
    port = int(box["url"].rsplit(":", 1)[1].split("/")[0])
    try:
        time.sleep(1.5)
        assert proc.poll() is None and health(port)
    finally:
        stop_server_process(proc)
        _kill_leftover(proc.pid)


def test_install_sigterm_handler_raises_system_exit(tmp_path):
    script = tmp_path / "h.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys, time
        from harness.lifecycle import install_sigterm_handler
        install_sigterm_handler()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            print("finally ran", flush=True)
    """))
    r = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 143 and "finally ran" in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_set_pdeathsig_registers_sigterm(tmp_path):
    script = tmp_path / "p.py"
    script.write_text(textwrap.dedent("""
        import ctypes
        from harness.lifecycle import set_pdeathsig
        assert set_pdeathsig()
        sig = ctypes.c_int(0)
        assert ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
        print(sig.value)
    """))
    r = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == signal.SIGTERM
