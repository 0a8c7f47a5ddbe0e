"""The engine: store, call layer (cache, retries, faults), backends over real HTTP."""
from __future__ import annotations

import asyncio


from harness.backends.base import GenRequest
from harness.backends.openai_backend import OpenAIBackend
from harness.calls import CallLayer, CallSettings
from harness.fake import ScriptedBackend
from harness.records import Completion, Judgment
from harness.serve import Faults, ServerThread, build_app
from harness.store import RunStore


def chat(text: str, **kw) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": text}], max_tokens=16, **kw)


def test_store_keys_are_unique_and_survive_reopen(tmp_path):
    s = RunStore(tmp_path)
    c = Completion("t", "1", "m", ["a"], gen_config_hash="h")
    s.put(c)
    s.put(c)  # same content key: replaced, not duplicated
    s.put(Completion("t", "1", "m", ["b"], sample_index=1, gen_config_hash="h"))
    s.close()
    s2 = RunStore(tmp_path)
    assert s2.count("completion") == 2
    assert s2.get("completion", c.key).texts == ["a"]
    assert s2.keys("completion") == {c.key, Completion("t", "1", "m", [], 1, gen_config_hash="h").key}


def test_store_ok_only_resume_skips_failures(tmp_path):
    s = RunStore(tmp_path)
    j = Judgment("t", "1", "m", "j", "jm", "h", "turn1", parse_status="error")
    s.put(j)
    assert j.key not in s.keys("judgment")  # errors are retried on the next run
    assert j.key in s.keys("judgment", ok_only=False)


def test_call_layer_caches_by_content(tmp_path):
    backend = ScriptedBackend()
    layer = CallLayer(tmp_path / "c.sqlite")
    reqs = [chat(f"q{i}") for i in range(5)] + [chat("q0", sample_index=1)]
    first = asyncio.run(layer.run(backend, reqs))
    assert layer.stats.cached == 0 and all(r.error is None for r in first)
    again = asyncio.run(layer.run(backend, reqs))
    assert layer.stats.cached == len(reqs)
    assert [r.text for r in again] == [r.text for r in first]
    # the sample index is part of the key: two samples of one prompt are two entries
    assert len(layer.cache) == 6


def test_retries_and_failures_are_counted_over_http(tmp_path):
    faults = Faults(rate_429=0.15, rate_500=0.15, rate_timeout=0.05, rate_malformed=0.15, timeout_sleep_s=1.5,
                    always_fail_marker="ALWAYS-FAIL", seed=3)
    app = build_app(ScriptedBackend(), "judge", faults)
    with ServerThread(app) as srv:
        backend = OpenAIBackend("judge", base_url=srv.base_url, timeout_s=0.5)
        layer = CallLayer(tmp_path / "c.sqlite", CallSettings(max_retries=8, timeout_s=0.5, backoff_base_s=0.01))
        reqs = [chat(f"question {i}") for i in range(40)] + [chat("ALWAYS-FAIL please")]
        results = asyncio.run(layer.run(backend, reqs))
    assert all(r.error is None for r in results[:-1])
    assert results[-1].error is not None and "HTTP 500" in results[-1].error
    assert layer.stats.failed == 1
    assert layer.stats.retries >= 5  # faults were hit and retried
    assert app.state.counters["faults"] >= 5


def test_retry_after_header_is_honoured(tmp_path):
    app = build_app(ScriptedBackend(), "judge", Faults(rate_429=0.5, retry_after_s=0.3, seed=1))
    with ServerThread(app) as srv:
        backend = OpenAIBackend("judge", base_url=srv.base_url)
        layer = CallLayer(tmp_path / "c.sqlite", CallSettings(max_retries=10, backoff_base_s=0.0, concurrency=1))
        import time

        t0 = time.perf_counter()
        asyncio.run(layer.run(backend, [chat(f"x{i}") for i in range(6)]))
        elapsed = time.perf_counter() - t0
    # every 429 waited Retry-After (0.3 s), not the zero exponential base
    assert elapsed >= 0.3 * layer.stats.retries * 0.9


def test_openai_backend_n_and_logprobs(tmp_path):
    app = build_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        backend = OpenAIBackend("judge", base_url=srv.base_url)
        layer = CallLayer(tmp_path / "c.sqlite")
        reqs = [chat("same prompt", sample_index=s, logprobs=True, top_logprobs=3, temperature=1.0)
                for s in range(3)]
        res = asyncio.run(layer.run(backend, reqs))
        assert layer.stats.sent == 1  # three samples, one n=3 call
        assert app.state.counters["requests"] == 1
        assert all(len(r.logprobs[0].top) == 3 for r in res)
        comp = asyncio.run(layer.run(backend, [GenRequest(prompt="The sea", max_tokens=4, logprobs=True,
                                                          top_logprobs=2)]))
        assert comp[0].error is None and comp[0].logprobs


def test_rate_limit_is_respected(tmp_path):
    import time

    backend = ScriptedBackend()
    backend.max_batch = 1
    layer = CallLayer(tmp_path / "c.sqlite", CallSettings(rps=5))
    t0 = time.perf_counter()
    asyncio.run(layer.run(backend, [chat(f"r{i}") for i in range(10)]))
    # 5 per second with a burst of 5: ten calls need at least ~1 s
    assert time.perf_counter() - t0 >= 0.9


def test_parse_failures_are_reasked_then_recorded(tmp_path):
    seen = []

    def answer(req):
        seen.append(req.attempt)
        return "no score here" if req.attempt < 5 else "[[3]]"

    layer = CallLayer(tmp_path / "c.sqlite", CallSettings(parse_retries=2))
    from judges.mt_bench_judge import parse_rating

    out = asyncio.run(layer.run_parsed(ScriptedBackend(answer=answer), [chat("judge me")],
                                       lambda res, i: parse_rating(res.text)))
    res, parsed, attempts = out[0]
    assert attempts == 3 and not parsed.ok and res.text == "no score here"
    assert seen == [0, 1, 2]
