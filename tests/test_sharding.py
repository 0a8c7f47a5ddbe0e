"""Sharded runs (by hand, Slurm array, Ray) give the same records as one process."""
from __future__ import annotations

import asyncio
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

from harness.config import load_config
from harness.fake import ScriptedBackend
from harness.pipeline import run_all
from harness.serve import Faults, ServerThread, build_app
from harness.sharding import ShardError, main, merge, resolve_shard, run_shard, select, shard_dir

LIMIT = 12  # mt_bench questions: 12 completions, 24 judge calls (two turns)


def write_cfg(path: Path, judge_url: str, data_dir: Path, limit: int = LIMIT) -> Path:
    cfg = {
        "name": "shardtest",
        "data_dir": str(data_dir),
        "models": [{"name": "m1", "backend": "scripted", "model": "writer"},
                   {"name": "m2", "backend": "scripted", "model": "writer2"}],
        "judge": {"name": "j", "backend": "openai", "model": "judge", "base_url": judge_url,
                  "api_key_env": "HARNESS_TEST_KEY"},
        "tasks": [{"name": "mt_bench", "limit": limit}],
        "calls": {"concurrency": 4, "max_retries": 4, "backoff_base_s": 0.01, "timeout_s": 10},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def records(run: Path) -> dict[str, dict]:
    """All records of a run by key, minus the field that times a call."""
    db = sqlite3.connect(run / "run.sqlite")
    try:
        rows = db.execute("SELECT key, data FROM records").fetchall()
    finally:
        db.close()
    out = {}
    for k, data in rows:
        d = json.loads(data)
        d.pop("latency_s", None)
        out[k] = d
    return out


def cache_rows(run: Path) -> dict[str, str]:
    db = sqlite3.connect(run / "cache.sqlite")
    try:
        rows = db.execute("SELECT key, data FROM cache").fetchall()
    finally:
        db.close()
    out = {}
    for k, data in rows:
        d = json.loads(data)
        d.pop("latency_s", None)
        out[k] = d
    return out


@pytest.fixture()
def judge_server():
    os.environ["HARNESS_TEST_KEY"] = "x"
    app = build_app(ScriptedBackend(), "judge", Faults(latency_s=0.02))
    with ServerThread(app) as srv:
        yield app, srv


@pytest.fixture()
def unsharded(tmp_path, data_dir, judge_server):
    _, srv = judge_server
    cfg = load_config(write_cfg(tmp_path / "c.yaml", srv.base_url, data_dir))
    out = tmp_path / "whole"
    result = asyncio.run(run_all(cfg, out))
    return out, result


def test_select_is_a_partition():
    items = list(range(23))
    parts = [select(items, i, 4) for i in range(4)]
    assert sorted(x for p in parts for x in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_index_from_slurm_environment():
    assert resolve_shard(None, None, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}) == (2, 4)
    # an array declared as --array=1-3
    assert resolve_shard(None, None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
                                      "SLURM_ARRAY_TASK_MAX": "3"}) == (2, 3)
    assert resolve_shard(1, 3, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == (1, 3)
    with pytest.raises(ShardError, match="Slurm job array"):
        resolve_shard(None, None, {})
    with pytest.raises(ShardError, match="not in 0..1"):
        resolve_shard(2, 2, {})
    with pytest.raises(ShardError, match="not an integer"):
        resolve_shard(None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"})


def test_job_array_shards_merge_to_the_unsharded_records(tmp_path, data_dir, judge_server, unsharded, monkeypatch,
                                                          capsys):
    whole, whole_result = unsharded
    _, srv = judge_server
    cfg = write_cfg(tmp_path / "c.yaml", srv.base_url, data_dir)
    parts = tmp_path / "parts"
    for i in range(3):  # what `sbatch --array=0-2` would start, run one after another
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(i))
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        assert main(["shard", "run", str(cfg), "--out", str(parts)]) == 0
    shard_records = [records(shard_dir(parts, i, 3)) for i in range(3)]
    assert all(shard_records)
    assert not set(shard_records[0]) & set(shard_records[1])  # each shard did its own part
    merged = tmp_path / "merged"
    assert main(["shard", "merge", str(merged), str(parts)]) == 0
    assert records(merged) == records(whole)
    assert len(records(merged)) == LIMIT + 2 * LIMIT + 2 * 2 * LIMIT  # instances, completions, judgments
    result = json.loads((merged / "results.json").read_text())
    assert result["results"] == whole_result["results"]
    # the call caches are merged too: the same answers under the same keys
    assert cache_rows(merged) == cache_rows(whole)
    # the same per-sample rows (their order follows the order records were stored in)
    rows = [sorted((m / "samples" / "mt_bench.jsonl").read_text().splitlines()) for m in (merged, whole)]
    assert rows[0] == rows[1] and len(rows[0]) == 2 * LIMIT


def test_merge_refuses_missing_or_conflicting_shards(tmp_path, data_dir, judge_server, capsys):
    _, srv = judge_server
    cfg = load_config(write_cfg(tmp_path / "c.yaml", srv.base_url, data_dir, limit=4))
    parts = tmp_path / "parts"
    asyncio.run(run_shard(cfg, parts, 0, 2))
    with pytest.raises(ShardError, match=r"shard\(s\) \[1\] of 2 not found"):
        merge(tmp_path / "m", [parts])
    asyncio.run(run_shard(cfg, parts, 1, 2))
    # tamper with one stored judgment: the same key with other content is a conflict
    copy = tmp_path / "copy" / "shard-00001-of-00002"
    copy.parent.mkdir()
    subprocess.run(["cp", "-r", str(shard_dir(parts, 0, 2)), str(copy)], check=True)
    marker = json.loads((copy / "shard.json").read_text())
    (copy / "shard.json").write_text(json.dumps({**marker, "index": 1}))
    db = sqlite3.connect(copy / "run.sqlite")
    key, data = db.execute("SELECT key, data FROM records WHERE kind='judgment' LIMIT 1").fetchone()
    db.execute("UPDATE records SET data=? WHERE key=?", (json.dumps({**json.loads(data), "value": 99}), key))
    db.commit()
    db.close()
    code = main(["shard", "merge", str(tmp_path / "m2"), str(shard_dir(parts, 0, 2)), str(copy)])
    err = capsys.readouterr().err
    assert code == 2 and f"record {key}: conflicts" in err and str(copy) in err
    code = main(["shard", "merge", str(tmp_path / "m3"), str(shard_dir(parts, 0, 2)), str(shard_dir(parts, 0, 2))])
    assert code == 2


def judgments(run: Path) -> int:
    try:
        db = sqlite3.connect(run / "run.sqlite")
        try:
            return db.execute("SELECT COUNT(*) FROM records WHERE kind='judgment'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def test_killed_shard_rerun_completes_the_run(tmp_path, data_dir, unsharded):
    whole, _ = unsharded
    app = build_app(ScriptedBackend(), "judge", Faults(latency_s=0.15))
    with ServerThread(app) as srv:
        cfg = write_cfg(tmp_path / "c.yaml", srv.base_url, data_dir)
        parts = tmp_path / "parts"
        env = {**os.environ, "HARNESS_TEST_KEY": "x"}
        cmd = [sys.executable, "-m", "harness.sharding", "shard", "run", str(cfg), "--num-shards", "2",
               "--out", str(parts)]
        assert subprocess.run(cmd + ["--shard", "0"], env=env, capture_output=True, timeout=120).returncode == 0
        proc = subprocess.Popen(cmd + ["--shard", "1"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        victim = shard_dir(parts, 1, 2)
        deadline = time.time() + 60
        while time.time() < deadline and judgments(victim) < 3:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = judgments(victim)
        assert 0 < done_before < 2 * 2 * LIMIT // 2
        with pytest.raises(ShardError, match=r"shard\(s\) \[1\] did not finish"):
            merge(tmp_path / "merged", [parts])
        served = app.state.counters["requests"]
        rerun = subprocess.run(cmd + ["--shard", "1"], env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        # the rerun sends only what the killed shard had not stored (plus the calls in flight)
        assert app.state.counters["requests"] - served <= 2 * LIMIT - done_before
        merge(tmp_path / "merged", [parts])
    assert records(tmp_path / "merged") == records(whole)


def test_ray_shards_merge_to_the_unsharded_records(tmp_path, data_dir, judge_server, unsharded):
    ray = pytest.importorskip("ray")
    from harness.sharding import run_with_ray

    whole, whole_result = unsharded
    _, srv = judge_server
    cfg = load_config(write_cfg(tmp_path / "c.yaml", srv.base_url, data_dir))
    # workers inherit the driver's environment: thread limits and the judge key
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_with_ray(cfg, tmp_path / "ray", num_shards=3)
    finally:
        ray.shutdown()
    assert result["merged"]["shards"] == 3
    assert records(tmp_path / "ray") == records(whole)
    assert result["results"] == whole_result["results"]
