"""Defects a hostile test found: settings checked at load, exit codes, out-of-range ratings,
the run-directory lock, bad input, redaction of echoed secrets, prompt storage."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from judges.mt_bench_judge import parse_rating
from support.stores import write_old_format_store

REPO = Path(__file__).resolve().parents[1]


def write_cfg(path: Path, **extra) -> Path:
    cfg = {
        "name": "t",
        "models": [{"name": "m1", "backend": "scripted", "model": "w"}],
        "judge": {"name": "j", "backend": "scripted", "model": "judge"},
        "tasks": [{"name": "mt_bench", "limit": 2}],
    }
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("calls,needle", [
    ({"rps": 0}, "calls.rps"),
    ({"rps": -2}, "calls.rps"),
    ({"concurrency": "many"}, "calls.concurrency"),
    ({"concurrency": 0}, "calls.concurrency"),
    ({"max_cost": "ten"}, "calls.max_cost"),
    ({"max_retries": -3}, "calls.max_retries"),
    ({"timeout_s": "soon"}, "calls.timeout_s"),
    ({"parse_retries": 1.5}, "calls.parse_retries"),
    ({"prices": {"m": {"prompt": "x"}}}, "calls.prices"),
    ({"nonsense": 1}, "calls"),
])
def test_bad_call_settings_fail_at_load(tmp_path, data_dir, capsys, calls, needle):
    cfg = write_cfg(tmp_path / "c.yaml", calls=calls)
    out = tmp_path / "run"
    code = main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and str(cfg) in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("gen,needle", [
    ({"max_tokens": "lots"}, "generation.max_tokens"),
    ({"max_tokens": 0}, "generation.max_tokens"),
    ({"temperature": -1}, "generation.temperature"),
    ({"top_p": 2}, "generation.top_p"),
    ({"n_samples": 0}, "generation.n_samples"),
    ({"bogus": 1}, "generation.bogus"),
])
def test_bad_generation_settings_fail_at_load(tmp_path, data_dir, capsys, gen, needle):
    cfg = write_cfg(tmp_path / "c.yaml", models=[{"name": "m1", "backend": "scripted", "generation": gen}])
    out = tmp_path / "run"
    code = main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and str(cfg) in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "", "..", "-rf"])
def test_unsafe_model_names_refused_at_load(tmp_path, data_dir, capsys, name):
    cfg = write_cfg(tmp_path / "c.yaml", models=[{"name": name, "backend": "scripted"}])
    code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "models[0].name" in err
    assert not (tmp_path / "run").exists()


def test_limit_must_be_positive(tmp_path, data_dir, capsys):
    cfg = write_cfg(tmp_path / "c.yaml")
    code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir), "--limit", "-1"])
    assert code == 2 and "--limit" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_that_is_a_directory_or_not_utf8(tmp_path, capsys):
    d = tmp_path / "cfgdir"
    d.mkdir()
    assert main(["run", str(d)]) == 2
    err = capsys.readouterr().err
    assert str(d) in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "UTF-8" in err and len(err.strip().splitlines()) == 1


def test_non_utf8_data_file_is_named(tmp_path, data_dir, capsys):
    mt = tmp_path / "data" / "mt_bench"
    mt.mkdir(parents=True)
    for f in ("judge_prompts.jsonl",):
        (mt / f).write_bytes((data_dir / "mt_bench" / f).read_bytes())
    (mt / "question.jsonl").write_bytes(b'{"question_id": 1, "category": "writing", "turns": ["caf\xe9"]}\n')
    cfg = write_cfg(tmp_path / "c.yaml")
    code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and "question.jsonl" in err and "UTF-8" in err
    assert not (tmp_path / "run").exists()


def test_out_of_range_mt_bench_rating_is_a_parse_failure():
    assert parse_rating("Rating: [[42]]").ok is False
    assert parse_rating("Rating: [[0]]").ok is False
    assert parse_rating("Rating: [[10]]").value == 10
    assert parse_rating("Rating: [[7.5]]").value == 7.5
    # FastChat itself accepts anything: the official mode keeps that
    assert parse_rating("Rating: [[42]]", official=True).value == 42


def test_mt_bench_leaderboard_rejects_non_numeric_score(tmp_path, capsys):
    f = tmp_path / "gpt-4_single.jsonl"
    f.write_text(json.dumps({"model": "a", "question_id": 1, "turn": 1, "score": "ten"}) + "\n")
    assert main(["leaderboard", "mt_bench", "--judgments", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "score" in err and len(err.strip().splitlines()) == 1


class EchoKey401(http.server.BaseHTTPRequestHandler):
    """A server that refuses every key and echoes it back in the error body."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"error": {"message": f"invalid key: {self.headers.get('authorization')}",
                                     "type": "invalid_request_error"}}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_run_whose_calls_all_fail_exits_nonzero(tmp_path, data_dir, capsys, monkeypatch):
    """Every judge call gets a 401: the run must not say it succeeded, and the echoed key is not stored."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoKey401)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = write_cfg(tmp_path / "c.yaml",
                        judge={"name": "j", "backend": "openai", "model": "judge",
                               "base_url": f"http://127.0.0.1:{srv.server_address[1]}/v1",
                               "api_key_env": "HARNESS_TEST_KEY"})
        monkeypatch.setenv("HARNESS_TEST_KEY", "wrong-key-sk-abcdef1234567890")
        code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir)])
    finally:
        srv.shutdown()
    captured = capsys.readouterr()
    assert code == 4
    assert "4 of 4 judge calls failed" in captured.err
    for p in (tmp_path / "run").rglob("*"):
        if p.is_file():
            assert b"abcdef1234567890" not in p.read_bytes(), p


def test_redact_removes_key_like_strings():
    from harness.redact import redact

    s = "401: invalid key sk-proj-AbC123xyz7890abcdef, Bearer abc.def-ghi_jkl0123456789, hf_abcdefghijklmnopqrstu"
    out = redact(s, secrets=["mysecretvalue"])
    assert "AbC123xyz7890abcdef" not in out and "abc.def-ghi_jkl0123456789" not in out
    assert "hf_abcdefghijklmnopqrstu" not in out
    assert redact("the key is mysecretvalue", secrets=["mysecretvalue"]) == "the key is [REDACTED]"
    assert redact("no secret here: score 7") == "no secret here: score 7"


def test_second_run_on_locked_directory_fails_at_once(tmp_path, data_dir):
    cfg = write_cfg(tmp_path / "c.yaml")
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from harness.lock import RunLock; "
        f"l = RunLock({str(out)!r}); l.acquire(); print('locked', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        env = {**os.environ, "HARNESS_DATA_DIR": str(data_dir)}
        done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(cfg), "--out", str(out)],
                              capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
        assert done.returncode == 2
        assert "in use by another harness process" in done.stderr and str(out) in done.stderr
        assert not (out / "run.sqlite").exists()
    finally:
        holder.kill()
        holder.wait()
    # after the holder died the lock is free again
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir)]) == 0


def test_read_only_run_directory_is_a_clear_error(tmp_path, data_dir, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores file modes: a read-only directory cannot be simulated")
    cfg = write_cfg(tmp_path / "c.yaml")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir)]) == 0
    for p in [out, *out.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        code = main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir)])
    finally:
        for p in [out, *out.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    err = capsys.readouterr().err
    assert code == 2 and str(out) in err


def test_judgment_prompts_are_stored_once(tmp_path, data_dir):
    """Three judge runs of one rubric prompt share one stored copy; the prompt is recoverable."""
    from harness.records import Judgment
    from harness.store import RunStore

    store = RunStore(tmp_path)
    big = [{"role": "user", "content": "x" * 2_000_000}]
    for run in range(3):
        store.put(Judgment("t", "1", "m", "j", "jm", "h", f"rubric0/run{run}", completion_key="c", prompt=big))
    store.close()
    size = sum(p.stat().st_size for p in tmp_path.glob("run.sqlite*"))
    assert size < 1_000_000, size
    store = RunStore(tmp_path)
    js = store.all("judgment")
    assert len(js) == 3 and all(store.judge_prompt(j) == big for j in js)


def test_generate_summary_names_only_files_it_wrote(tmp_path, data_dir, capsys):
    cfg = write_cfg(tmp_path / "c.yaml")
    out = tmp_path / "run"
    assert main(["generate", str(cfg), "--out", str(out), "--data-dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out
    assert "results.json" not in printed and "leaderboard" not in printed
    assert "run directory" in printed


def test_old_run_directory_fails_with_clear_message(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    write_old_format_store(out)
    cfg = write_cfg(tmp_path / "c.yaml")
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "older harness" in err and str(out) in err
