"""Whole runs through the CLI: resume after SIGKILL, bad input, secrets, real local judge."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.fake import ScriptedBackend
from harness.serve import Faults, ServerThread, build_app

REPO = Path(__file__).resolve().parents[1]


def write_cfg(path: Path, judge_url: str | None, limit: int = 80, **extra) -> Path:
    cfg = {
        "name": "t",
        "models": [{"name": "m1", "backend": "scripted", "model": "writer"}],
        "judge": {"name": "j", "backend": "openai", "model": "judge", "base_url": judge_url,
                  "api_key_env": "HARNESS_TEST_KEY"},
        "tasks": [{"name": "mt_bench", "limit": limit}],
        "calls": {"concurrency": 4, "max_retries": 8, "backoff_base_s": 0.01, "timeout_s": 5},
    }
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def judgments(run: Path) -> list[tuple]:
    db = sqlite3.connect(run / "run.sqlite")
    try:
        return db.execute("SELECT key, status FROM records WHERE kind='judgment'").fetchall()
    except sqlite3.OperationalError:  # the writer has not created the table yet
        return []
    finally:
        db.close()


def test_sigkill_mid_judging_resumes_without_repeating_calls(tmp_path, data_dir):
    app = build_app(ScriptedBackend(), "judge", Faults(latency_s=0.1))
    with ServerThread(app) as srv:
        cfg = write_cfg(tmp_path / "c.yaml", srv.base_url, limit=40)
        out = tmp_path / "run"
        env = {**os.environ, "HARNESS_TEST_KEY": "x", "HARNESS_DATA_DIR": str(data_dir)}
        cmd = [sys.executable, "-m", "harness.cli", "run", str(cfg), "--out", str(out)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if (out / "run.sqlite").exists() and len(judgments(out)) >= 12:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n_before = len(judgments(out))
        assert 0 < n_before < 80
        served_before = app.state.counters["requests"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        rows = judgments(out)
        assert len(rows) == 80 and len({k for k, _ in rows}) == 80  # 40 questions x 2 turns, no duplicates
        assert all(s == "ok" for _, s in rows)
        served_after = app.state.counters["requests"] - served_before
        # only calls never answered are sent again (at most the ones in flight were lost)
        assert served_after <= 80 - n_before
        assert served_before + served_after <= 80 + 4
        results = json.loads((out / "results.json").read_text())
        assert results["results"]["mt_bench"]["m1"]["n"] == 40
        assert "from cache" in done.stdout


def test_rerun_of_finished_run_sends_nothing(tmp_path, data_dir, capsys):
    app = build_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        os.environ["HARNESS_TEST_KEY"] = "x"
        cfg = write_cfg(tmp_path / "c.yaml", srv.base_url, limit=5)
        args = ["run", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir)]
        assert main(args) == 0
        n = app.state.counters["requests"]
        assert main(args) == 0
        assert app.state.counters["requests"] == n


def test_faulty_judge_server_run_completes_and_counts_failures(tmp_path, data_dir, capsys):
    # random faults, plus question 81 (the Hawaii travel blog) failing every time: both its turns'
    # judge calls exhaust their retries whatever the arrival order
    faults = Faults(rate_429=0.1, rate_500=0.1, rate_malformed=0.1, rate_timeout=0.05, timeout_sleep_s=1.2,
                    always_fail_marker="Hawaii", seed=5)
    app = build_app(ScriptedBackend(), "judge", faults)
    with ServerThread(app) as srv:
        os.environ["HARNESS_TEST_KEY"] = "x"
        cfg = write_cfg(tmp_path / "c.yaml", srv.base_url, limit=10,
                        calls={"concurrency": 4, "max_retries": 1, "backoff_base_s": 0.01, "timeout_s": 1})
        assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir)]) == 0
    res = json.loads((tmp_path / "run/results.json").read_text())
    failed = res["failures"]["mt_bench"]["judge_errors"]
    stored = judgments(tmp_path / "run")
    assert len(stored) == 20
    assert failed == sum(s == "error" for _, s in stored) and failed == res["calls"]["failed"]
    assert failed >= 2  # requests that exhausted their one retry are recorded as such
    out = capsys.readouterr().out
    assert f"{failed} judge errors" in out


def test_api_key_never_written(tmp_path, data_dir):
    secret = "sk-test-SECRET-0123456789"
    app = build_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        os.environ["HARNESS_TEST_KEY"] = secret
        cfg = write_cfg(tmp_path / "c.yaml", srv.base_url, limit=3)
        assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir)]) == 0
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c["tasks"].__setitem__(0, {"name": "mt_bnch"}), "tasks[0].name: unknown task 'mt_bnch'"),
    (lambda c: c["models"][0].__setitem__("backend", "hff"), "models[0].backend: unknown backend 'hff'"),
    (lambda c: c["models"][0].update(backend="hf", model="/nonexistent/model"),
     "models[0].model: model path does not exist: /nonexistent/model"),
    (lambda c: c["models"][0].__setitem__("temperature", 1), "models[0]: unknown field(s) ['temperature']"),
])
def test_bad_config_one_clear_error_nothing_written(tmp_path, data_dir, capsys, mutate, needle):
    cfg_path = write_cfg(tmp_path / "c.yaml", "http://127.0.0.1:9/v1")
    cfg = yaml.safe_load(cfg_path.read_text())
    mutate(cfg)
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    code = main(["run", str(cfg_path), "--out", str(out), "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(cfg_path) in err and needle in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_question_file_nothing_written(tmp_path, data_dir, capsys):
    d = tmp_path / "mt"
    d.mkdir()
    (d / "question.jsonl").write_text('{"question_id": 81, "category": "writing"}\n')
    (d / "judge_prompts.jsonl").write_text((data_dir / "mt_bench/judge_prompts.jsonl").read_text())
    cfg = write_cfg(tmp_path / "c.yaml", "http://127.0.0.1:9/v1")
    raw = yaml.safe_load(cfg.read_text())
    raw["tasks"] = [{"name": "mt_bench", "options": {"path": str(d)}}]
    cfg.write_text(yaml.safe_dump(raw))
    code = main(["run", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "question.jsonl: line 1: missing field 'turns'" in err
    assert not (tmp_path / "run").exists()


def test_logprob_judge_method_is_recorded(tmp_path, data_dir):
    app = build_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        os.environ["HARNESS_TEST_KEY"] = "x"
        cfg = write_cfg(tmp_path / "c.yaml", srv.base_url, limit=2)
        raw = yaml.safe_load(cfg.read_text())
        raw["judge"]["method"] = "logprob"
        cfg.write_text(yaml.safe_dump(raw))
        assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir)]) == 0
    samples = [json.loads(x) for x in (tmp_path / "run/samples/mt_bench.jsonl").read_text().splitlines()]
    js = [j for s in samples for j in s["judgments"]]
    assert len(js) == 4 and all(j["method"] == "logprob" and 1 <= j["value"] <= 10 for j in js)


@pytest.mark.slow
def test_demo_config_on_embedded_default(tmp_path, data_dir):
    """SmolLM2 answers and judges through `harness serve` over real HTTP."""
    from harness.models import default_model_dir

    if not (default_model_dir() / "config.json").exists():
        pytest.skip("embedded model not prepared (harness models prepare)")
    out = tmp_path / "demo"
    cfg = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    cfg["models"] = cfg["models"][:1]  # the base model (the SFT one is trained by `make demo`)
    cfg["tasks"] = [{"name": "mt_bench", "limit": 2, "options": {"generation": {"max_tokens": 24}}}]
    cfg.pop("out")
    cfg.pop("experiment", None)  # the evaluation alone (the experiment's stages are tested on their own)
    cfg["models"][0].pop("system_variants", None)
    p = tmp_path / "demo.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "--out", str(out), "--data-dir", str(data_dir)]) == 0
    res = json.loads((out / "results.json").read_text())
    m = res["results"]["mt_bench"]["smollm2-135m"]
    assert m["n"] == 2 and 1 <= m["score"] <= 10
    assert (out / "leaderboard.csv").exists() and (out / "environment.json").exists()


def test_dry_run_and_max_cost_stop_cleanly_and_resume(tmp_path, data_dir, capsys):
    app = build_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        os.environ["HARNESS_TEST_KEY"] = "x"
        prices = {"judge": {"prompt": 1000.0, "completion": 1000.0}}  # $ per 1M tokens: ~0.05 $ a call
        cfg = write_cfg(tmp_path / "c.yaml", srv.base_url, limit=10,
                        calls={"concurrency": 1, "prices": prices})
        out = tmp_path / "run"
        base = ["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir)]
        assert main(base + ["--dry-run"]) == 0
        text = capsys.readouterr().out
        import re

        assert re.search(r"^judge\s+mt_bench\s+j\s+20 calls", text, re.M)  # 10 questions x 2 turns
        assert re.search(r"^generate\s+mt_bench\s+m1\s+20 calls", text, re.M)
        assert app.state.counters["requests"] == 0 and not out.exists()
        assert main(base + ["--max-cost", "0.2"]) == 3
        assert "cost limit" in capsys.readouterr().err
        first = len(judgments(out))
        assert 0 < first < 20
        assert main(base) == 0  # no limit: the rest is judged, nothing is repeated
        assert len(judgments(out)) == 20
        assert app.state.counters["requests"] == 20
