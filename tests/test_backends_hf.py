"""The hf backend on a tiny random model, directly and behind `harness serve`."""
from __future__ import annotations

import asyncio

from harness.backends.base import GenRequest
from harness.backends.hf import HFBackend
from harness.backends.openai_backend import OpenAIBackend
from harness.calls import CallLayer
from harness.serve import ServerThread, build_app
from harness.templates import render_janus_mistral


def _msgs(text, system=None):
    m = [{"role": "system", "content": system}] if system else []
    return m + [{"role": "user", "content": text}]


def test_left_padded_batch_equals_one_at_a_time(tiny_model_dir):
    b = HFBackend(str(tiny_model_dir), batch_size=8)
    reqs = [GenRequest(messages=_msgs("hi" * (i + 1), system="be brief" if i % 2 else None), max_tokens=8)
            for i in range(5)]
    batched = asyncio.run(b.generate(reqs))
    single = [asyncio.run(b.generate([r]))[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.completion_tokens <= 8 and r.prompt_tokens > 0 for r in batched)


def test_logprobs_are_log_probabilities(tiny_model_dir):
    import math

    b = HFBackend(str(tiny_model_dir))
    r = asyncio.run(b.generate([GenRequest(prompt="The sea", max_tokens=3, logprobs=True, top_logprobs=5)]))[0]
    assert len(r.logprobs) == r.completion_tokens
    for t in r.logprobs:
        assert t.logprob <= 0 and len(t.top) == 5
        assert t.top[0][1] >= t.logprob - 1e-6  # greedy picks the top token
        assert sum(math.exp(lp) for _, lp in t.top) <= 1 + 1e-5


def test_samples_differ_and_are_reproducible(tiny_model_dir):
    b = HFBackend(str(tiny_model_dir))
    reqs = [GenRequest(prompt="Once", max_tokens=12, temperature=1.0, top_p=1.0, sample_index=s) for s in range(4)]
    a = [r.text for r in asyncio.run(b.generate(reqs))]
    again = [r.text for r in asyncio.run(b.generate(reqs))]
    assert a == again and len(set(a)) > 1


def test_janus_mistral_template():
    text = render_janus_mistral(_msgs("What is 2+2?", system="I like short answers."))
    assert text == "<s>[INST] I like short answers.\nWhat is 2+2? [/INST]"


def test_hf_behind_http_server(tiny_model_dir, tmp_path):
    backend = HFBackend(str(tiny_model_dir))
    with ServerThread(build_app(backend, "tiny")) as srv:
        client = OpenAIBackend("tiny", base_url=srv.base_url)
        layer = CallLayer(tmp_path / "c.sqlite")
        reqs = [GenRequest(messages=_msgs("hello"), max_tokens=6, temperature=1.0, sample_index=s, logprobs=True,
                           top_logprobs=4) for s in range(3)]
        res = asyncio.run(layer.run(client, reqs))
        assert layer.stats.sent == 1 and all(r.error is None for r in res)
        assert all(r.logprobs and len(r.logprobs[0].top) == 4 for r in res)
        # continue_final_message: score tokens read after an assistant prefix
        pre = GenRequest(messages=_msgs("rate it") + [{"role": "assistant", "content": "Rating: [["}],
                         max_tokens=1, logprobs=True, top_logprobs=10, continue_final_message=True)
        direct = asyncio.run(backend.generate([pre]))[0]
        over_http = asyncio.run(layer.run(client, [pre]))[0]
        assert over_http.logprobs[0].token == direct.logprobs[0].token
        assert abs(over_http.logprobs[0].logprob - direct.logprobs[0].logprob) < 1e-5
