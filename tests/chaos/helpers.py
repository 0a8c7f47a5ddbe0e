"""Shared pieces of the chaos tests: configs, subprocess runs in a sandbox, record queries, invariants."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-chaos-SECRET123456789"
KEY_ENV = "HARNESS_CHAOS_KEY"
# a temp file of harness.store.atomic_write_text: "." + final name + "." + 12 hex digits
TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{12}$")


def n_seeds() -> int:
    try:
        return max(1, int(os.environ.get("HARNESS_CHAOS_SEEDS", "3")))
    except ValueError:
        return 3


def seeds() -> list[int]:
    return list(range(n_seeds()))


# ------------------------------------------------------------------------------------------ sandbox
class Sandbox:
    """A folder for one test: inputs, cwd, HOME and TMPDIR of every child live in it, so a file a
    command writes outside its --out shows up in :meth:`stray_files`. Third-party caches (matplotlib,
    Hugging Face) are pointed at ``libcache`` (outside the sandbox): they are not the harness's files."""

    def __init__(self, root: Path, data_dir: Path, libcache: Path):
        self.root = Path(root)
        self.cwd = self.root / "cwd"
        self.home = self.root / "home"
        self.tmp = self.root / "tmp"
        for d in (self.cwd, self.home, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir)
        libcache.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HARNESS_DATA_DIR": str(self.data_dir), "HOME": str(self.home), "TMPDIR": str(self.tmp),
            "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(libcache / "mpl"), "HF_HOME": str(libcache / "hf"),
            "XDG_CACHE_HOME": str(libcache / "xdg"), KEY_ENV: SECRET,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        }
        self.outputs: list[Path] = []  # folders commands may write into
        self._before = self.snapshot()

    def out(self, name: str) -> Path:
        p = self.root / name
        self.outputs.append(p)
        return p

    def snapshot(self) -> set[str]:
        return {str(p) for p in self.root.rglob("*") if p.is_file() or p.is_symlink()}

    def inputs_done(self) -> None:
        """Everything the test itself wrote so far is an input, not a stray output."""
        self._before = self.snapshot()

    def stray_files(self) -> list[str]:
        allowed = [str(o) for o in self.outputs]
        return sorted(p for p in self.snapshot() - self._before
                      if not any(p == a or p.startswith(a + os.sep) for a in allowed))

    def cmd(self, *args: str, wrapper: str | None = None) -> list[str]:
        if wrapper is not None:
            return [sys.executable, "-c", wrapper, *args]
        return [sys.executable, "-m", "harness.cli", *args]

    def run(self, *args: str, timeout: float = 120, wrapper: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args, wrapper=wrapper), cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, *args: str, wrapper: str | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args, wrapper=wrapper), cwd=self.cwd, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"command did not finish within {timeout}s; stderr: {err[-2000:]}")
    return proc.returncode, out, err


def sigkill(proc: subprocess.Popen) -> bool:
    """SIGKILL the process; True if it was still running (the kill landed). Its output is collected
    into ``proc.captured`` (stdout, stderr) either way."""
    landed = proc.poll() is None
    if landed:
        proc.send_signal(signal.SIGKILL)
    proc.captured = proc.communicate(timeout=120)
    return landed and proc.returncode == -signal.SIGKILL


# ------------------------------------------------------------------------------------------ configs
def mt_bench_config(path: Path, judge_url: str | None, limit: int, calls: dict | None = None,
                    models: int = 1, **extra) -> Path:
    """MT-Bench with scripted writers, judged by an OpenAI-compatible server at ``judge_url`` (or the
    in-process scripted judge when None). The judge's key is the secret of these tests."""
    judge = ({"name": "j", "backend": "openai", "model": "judge", "base_url": judge_url, "api_key_env": KEY_ENV}
             if judge_url else {"name": "j", "backend": "scripted", "model": "judge"})
    cfg = {
        "name": "chaos",
        "models": [{"name": f"m{i + 1}", "backend": "scripted", "model": f"writer{i + 1}"} for i in range(models)],
        "judge": judge,
        "tasks": [{"name": "mt_bench", "limit": limit}],
        "calls": calls if calls is not None else {"concurrency": 4, "max_retries": 8, "backoff_base_s": 0.01,
                                                   "timeout_s": 5},
    }
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ records
def _rows(run: Path, sql: str, args=()) -> list[tuple]:
    db_path = Path(run) / "run.sqlite"
    if not db_path.exists():
        return []
    db = sqlite3.connect(db_path, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the writer has not created the tables yet
        return []
    finally:
        db.close()


def count(run: Path, kind: str, status: str | None = None) -> int:
    q = "SELECT COUNT(*) FROM records WHERE kind=?" + (" AND status=?" if status else "")
    rows = _rows(run, q, (kind, status) if status else (kind,))
    return rows[0][0] if rows else 0


def ok_keys(run: Path, kind: str = "judgment") -> set[str]:
    return {k for (k,) in _rows(run, "SELECT key FROM records WHERE kind=? AND status='ok'", (kind,))}


def records(run: Path, kind: str) -> list[dict]:
    return [json.loads(d) for (d,) in _rows(run, "SELECT data FROM records WHERE kind=? ORDER BY rowid", (kind,))]


def judgment_values(run: Path) -> dict[str, tuple]:
    """key -> (parse status, value) of every stored judgment."""
    out = {}
    for k, s, d in _rows(run, "SELECT key, status, data FROM records WHERE kind='judgment'"):
        out[k] = (s, json.loads(d).get("value"))
    return out


def logical_duplicates(run: Path) -> list:
    """Records that say the same thing under different keys (a resumed step that redid work)."""
    dups = []
    seen: dict[tuple, str] = {}
    for kind, ident in (("instance", ("task", "id")),
                        ("completion", ("task", "instance_id", "model", "sample_index", "gen_config_hash")),
                        ("judgment", ("task", "instance_id", "model", "judge", "judge_model", "judge_config_hash",
                                      "criterion", "completion_key", "baseline", "position"))):
        for key, d in _rows(run, "SELECT key, data FROM records WHERE kind=?", (kind,)):
            rec = json.loads(d)
            sig = (kind,) + tuple(json.dumps(rec.get(f), sort_keys=True) for f in ident)
            if sig in seen and seen[sig] != key:
                dups.append((sig, seen[sig], key))
            seen[sig] = key
    n, distinct = (_rows(run, "SELECT COUNT(*), COUNT(DISTINCT key) FROM records") or [(0, 0)])[0]
    if n != distinct:
        dups.append(("same key stored twice", n, distinct))
    return dups


def results(run: Path) -> dict:
    return json.loads((Path(run) / "results.json").read_text())


def comparable(run: Path) -> dict:
    """What an interrupted and an uninterrupted run must agree on."""
    r = results(run)
    samples = {}
    for f in sorted((Path(run) / "samples").glob("*.jsonl")):
        samples[f.name] = sorted(f.read_text().splitlines())
    return {"results": r["results"], "failures": r["failures"], "samples": samples}


def files_with(root: Path, needle: str) -> list[str]:
    """Every file below root whose bytes contain needle (sqlite files and their -wal/-shm included).
    Safe while a writer runs: a file that disappears meanwhile is skipped."""
    b = needle.encode()
    found = []
    for p in Path(root).rglob("*"):
        try:
            if p.is_file() and b in p.read_bytes():
                found.append(str(p))
        except (FileNotFoundError, PermissionError):
            continue
    return sorted(found)


def temp_leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob("*") if TEMP_FILE.match(p.name) or ".tmp" in p.name)


def wait_until(pred, proc: subprocess.Popen | None = None, timeout: float = 60, step: float = 0.01) -> bool:
    """Poll pred() until true; False if proc exited first or the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(pred())
        time.sleep(step)
    return False


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("harness: error")]


# ------------------------------------------------------------------------------------------ mounts
@contextmanager
def tmpfs(path: Path, size: str = "2m"):
    """A tmpfs of ``size`` at path; the test is skipped when it cannot be mounted; always unmounted."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} (needs root with CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


def is_mounted(path: Path) -> bool:
    target = str(Path(path).resolve())
    return any(line.split()[1] == target for line in Path("/proc/mounts").read_text().splitlines())


# `harness ...` that SIGKILLs itself when it is about to rename the temp file of argv[1] into place
KILL_IN_ATOMIC_WRITE = r'''
import os, signal, sys
name = sys.argv[1]
_replace = os.replace
def replace(src, dst, *a, **k):
    if os.path.basename(str(dst)) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *a, **k)
os.replace = replace
from harness.cli import main
sys.exit(main(sys.argv[2:]))
'''
