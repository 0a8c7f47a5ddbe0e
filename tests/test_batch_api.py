"""Batch API path against a loopback files+batches server: resume, no double sends, cache fill."""
from __future__ import annotations

import asyncio
import json
import sqlite3

import openai
import pytest
import yaml

from harness.backends.base import GenRequest
from harness.backends.openai_backend import OpenAIBackend
from harness.batch_api import BatchJob, request_body, result_from_body
from harness.batch_transport import batch_judge
from harness.calls import CallCache, CallLayer, CallSettings
from harness.config import load_config
from harness.fake import ScriptedBackend, judge_like_answer
from support.fake_batch_server import build_batch_app
from harness.pipeline import run_all
from harness.serve import ServerThread

MODEL_ID = "openai:judge"


def judge_requests(n: int) -> list[GenRequest]:
    return [GenRequest(messages=[{"role": "system", "content": "You are a fair judge."},
                                 {"role": "user", "content": f"Rate answer #{i}: the sky is blue."}],
                       max_tokens=64, temperature=0.0, logprobs=i % 4 == 0, top_logprobs=3 if i % 4 == 0 else 0)
            for i in range(n)]


def make_job(tmp_path, srv, client=None) -> BatchJob:
    return BatchJob(CallCache(tmp_path / "cache.sqlite"), "judge", MODEL_ID, tmp_path / "batch_state.json",
                    base_url=srv.base_url, api_key_env="HARNESS_TEST_KEY", poll_interval_s=0, client=client)


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_KEY", "x")


def test_request_body_round_trip():
    req = judge_requests(1)[0]
    body = request_body("judge", req)
    assert body == {"model": "judge", "messages": req.messages, "max_tokens": 64, "temperature": 0.0, "top_p": 1.0,
                    "logprobs": True, "top_logprobs": 3}
    res = result_from_body({"choices": [{"message": {"content": "Rating: [[7]]"}, "finish_reason": "stop",
                                         "logprobs": {"content": [{"token": "7", "logprob": -0.1,
                                                                   "top_logprobs": [{"token": "7", "logprob": -0.1}]}]}}],
                            "usage": {"prompt_tokens": 12, "completion_tokens": 5}})
    assert (res.text, res.prompt_tokens, res.completion_tokens, res.logprobs[0].top) == ("Rating: [[7]]", 12, 5,
                                                                                         [("7", -0.1)])
    with pytest.raises(ValueError, match="choices"):
        result_from_body({"error": "x"})
    with pytest.raises(ValueError, match="only chat requests"):
        request_body("judge", GenRequest(prompt="hi"))


def test_200_requests_expired_after_half_resume_each_sent_once(tmp_path):
    app = build_batch_app(ScriptedBackend(), "judge", expire_after=100)
    reqs = judge_requests(200)
    with ServerThread(app) as srv:
        # first process: submits, sees the batch start, and is stopped while it runs
        first = make_job(tmp_path, srv).run(reqs, wait=False)
        assert first.pending and first.submitted_requests == 200 and first.received == 0
        state = json.loads((tmp_path / "batch_state.json").read_text())
        assert len(state["active"]) == 1 and state["active"][0]["batch_id"]

        # a new process resumes polling the same batch; it expires after half its requests,
        # and only the missing half is submitted again
        second = make_job(tmp_path, srv).run(reqs)
        st = app.state.batch
        assert not second.pending and second.missing == 0 and second.failed == 0
        assert second.submitted_batches == 1 and second.submitted_requests == 100
        assert second.received == 200
        assert len(st.batches) == 2
        assert [b["status"] for b in st.batches.values()] == ["expired", "completed"]
        assert st.uploaded_lines == 300
        keys = [r.cache_key(MODEL_ID) for r in reqs]
        assert set(st.answered) == set(keys) and set(st.answered.values()) == {1}  # each answered once

        cache = CallCache(tmp_path / "cache.sqlite")
        cached = cache.get_many(keys)
        assert len(cached) == 200
        for r, k in zip(reqs, keys):
            assert cached[k]["text"] == judge_like_answer(r)
            assert (cached[k]["logprobs"] is not None) == r.logprobs
        cache.close()

        # the normal path now finds every answer cached: nothing reaches the chat endpoint
        layer = CallLayer(tmp_path / "cache.sqlite", CallSettings(concurrency=4))
        backend = OpenAIBackend("judge", base_url=srv.base_url, api_key_env="HARNESS_TEST_KEY")
        assert backend.model_id == MODEL_ID
        results = asyncio.run(layer.run(backend, reqs))
        layer.close()
        assert all(r.cached for r in results)
        assert [r.text for r in results] == [judge_like_answer(r) for r in reqs]
        assert app.state.counters["requests"] == 0

        # a finished job asked again submits nothing
        again = make_job(tmp_path, srv).run(reqs)
        assert again.submitted_batches == 0 and again.cached_before == 200
        assert len(st.batches) == 2


class KilledAfterCreate:
    """An openai client whose process dies right after the server accepted the batch."""

    def __init__(self, client):
        self._client = client
        self.files = client.files
        self.batches = self

    def create(self, **kw):
        self._client.batches.create(**kw)
        raise KeyboardInterrupt  # before the batch id could be written down

    def __getattr__(self, name):
        return getattr(self._client.batches, name)


def test_kill_between_create_and_state_write_recovers_the_batch(tmp_path):
    app = build_batch_app(ScriptedBackend(), "judge")
    reqs = judge_requests(20)
    with ServerThread(app) as srv:
        real = openai.OpenAI(base_url=srv.base_url, api_key="x")
        with pytest.raises(KeyboardInterrupt):
            make_job(tmp_path, srv, client=KilledAfterCreate(real)).run(reqs)
        report = make_job(tmp_path, srv).run(reqs)
        assert report.submitted_batches == 0 and report.received == 20 and report.missing == 0
        assert len(app.state.batch.batches) == 1
        assert set(app.state.batch.answered.values()) == {1}


def test_cancelled_batch_keeps_its_finished_part(tmp_path):
    app = build_batch_app(ScriptedBackend(), "judge", step=5)
    reqs = judge_requests(20)
    with ServerThread(app) as srv:
        job = make_job(tmp_path, srv)
        assert job.run(reqs, wait=False).pending  # validating -> in_progress
        assert job.run(reqs, wait=False).pending  # 5 answered
        job.cancel()
        job.max_rounds = 0  # collect only, submit nothing new
        report = job.run(reqs, wait=True)
        assert report.received == 5 and report.missing == 15
        assert list(app.state.batch.batches.values())[0]["status"] == "cancelled"
        report = make_job(tmp_path, srv).run(reqs)
        assert report.missing == 0 and report.submitted_requests == 15
        assert set(app.state.batch.answered.values()) == {1}


def judgment_rows(run) -> dict:
    db = sqlite3.connect(run / "run.sqlite")
    try:
        rows = db.execute("SELECT key, data FROM records WHERE kind='judgment'").fetchall()
    finally:
        db.close()
    return {k: json.loads(d) for k, d in rows}


def batch_config(tmp_path, data_dir, srv, limit: int, **extra):
    """A config file: the scripted writer, an OpenAI judge on the loopback batch server, MT-Bench."""
    raw = {"name": "b", "data_dir": str(data_dir),
           "models": [{"name": "m1", "backend": "scripted", "model": "writer"}],
           "judge": {"name": "j", "backend": "openai", "model": "judge", "base_url": srv.base_url,
                     "api_key_env": "HARNESS_TEST_KEY"},
           "tasks": [{"name": "mt_bench", "limit": limit}], **extra}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    return raw


def test_pipeline_batch_judging_equals_online_judging(tmp_path, data_dir):
    app = build_batch_app(ScriptedBackend(), "judge", step=4)
    with ServerThread(app) as srv:
        batch_config(tmp_path, data_dir, srv, 6, calls={"concurrency": 4, "backoff_base_s": 0.01})
        cfg = load_config(tmp_path / "c.yaml")
        report = asyncio.run(batch_judge(cfg, tmp_path / "batch", poll_interval_s=0))
        assert report.requests == 12 and report.received == 12 and report.missing == 0
        assert app.state.counters["requests"] == 0  # the judge step found every answer cached
        online = asyncio.run(run_all(load_config(tmp_path / "c.yaml"), tmp_path / "online"))
        assert app.state.counters["requests"] == 12
    by_batch = judgment_rows(tmp_path / "batch")
    assert len(by_batch) == 12 and all(j["parse_status"] == "ok" for j in by_batch.values())
    assert by_batch == judgment_rows(tmp_path / "online")
    res = json.loads((tmp_path / "batch" / "results.json").read_text())
    assert res["results"] == online["results"]


def test_cli_no_wait_then_collect(tmp_path, data_dir, capsys):
    from harness.batch_api import main

    app = build_batch_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        raw = batch_config(tmp_path, data_dir, srv, 3)
        args = ["batch", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--poll-interval", "0"]
        assert main(args + ["--no-wait"]) == 0
        assert "batch still running" in capsys.readouterr().out
        assert not (tmp_path / "run" / "results.json").exists()
        assert main(args) == 0
        report = json.loads(capsys.readouterr().out.splitlines()[0])
        assert report["submitted_batches"] == 0 and report["received"] == 6 and report["missing"] == 0
        assert len(app.state.batch.batches) == 1 and app.state.counters["requests"] == 0
        assert json.loads((tmp_path / "run" / "results.json").read_text())["results"]["mt_bench"]["m1"]["n"] == 3
    # a judge that is not an OpenAI endpoint is refused with one clear line
    raw["judge"]["backend"] = "scripted"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(args) == 2
    assert "judge.backend: the Batch API needs an 'openai' judge" in capsys.readouterr().err


def test_rerun_after_a_batch_answers_from_the_cache(tmp_path, data_dir):
    """The batch transport fills the cache entries an online judge call would: a plain `harness run`
    over the same directory afterwards sends nothing and stores the same judgments."""
    app = build_batch_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        batch_config(tmp_path, data_dir, srv, 2)
        report = asyncio.run(batch_judge(load_config(tmp_path / "c.yaml"), tmp_path / "run", poll_interval_s=0))
        assert report.received == 4 and report.missing == 0 and not report.pending
        before = judgment_rows(tmp_path / "run")
        out = asyncio.run(run_all(load_config(tmp_path / "c.yaml"), tmp_path / "run"))
        assert app.state.counters["requests"] == 0 and len(app.state.batch.batches) == 1
        assert judgment_rows(tmp_path / "run") == before and out["results"]["mt_bench"]["m1"]["n"] == 2


def test_a_task_with_its_own_judge_model_is_batched_with_that_model(tmp_path, data_dir):
    app = build_batch_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        raw = batch_config(tmp_path, data_dir, srv, 2)
        judge = raw.pop("judge")  # no run-wide judge: the task names its own
        raw["tasks"][0]["judge_model"] = dict(judge, name="gpt4-judge")
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
        report = asyncio.run(batch_judge(load_config(tmp_path / "c.yaml"), tmp_path / "run", poll_interval_s=0))
        assert report.received == 4 and report.missing == 0 and app.state.counters["requests"] == 0
        assert (tmp_path / "run" / "batch_state.gpt4-judge.json").exists()
    rows = judgment_rows(tmp_path / "run")
    assert len(rows) == 4 and {j["judge_model"] for j in rows.values()} == {"gpt4-judge"}
