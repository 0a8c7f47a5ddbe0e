"""Greedy decoding in dynamic batches (harness/backends/hf_batching.py) gives generate()'s texts."""
from __future__ import annotations

import pytest

from harness.backends.base import GenRequest
from harness.backends.hf import HFBackend


def _pair(path: str):
    plain = HFBackend(path, prefix_cache=0, dynamic_batching=False)  # model.generate, as before
    fast = HFBackend(path)
    fast._model, fast._tok = plain.load()
    return plain, fast


def _same(a, b, lp_tol=1e-5):
    for x, y in zip(a, b):
        assert (x.text, x.finish_reason, x.prompt_tokens, x.completion_tokens) == \
               (y.text, y.finish_reason, y.prompt_tokens, y.completion_tokens)
        if x.logprobs is not None:
            assert [t.token for t in x.logprobs] == [t.token for t in y.logprobs]
            for s, t in zip(x.logprobs, y.logprobs):
                assert s.logprob == pytest.approx(t.logprob, abs=lp_tol)
                assert [k for k, _ in s.top] == [k for k, _ in t.top]


def test_greedy_equals_generate_with_rows_ending_early(tiny_model_dir):
    plain, fast = _pair(str(tiny_model_dir))
    model, tok = plain.load()
    msgs = [[{"role": "user", "content": "Write about the sea " * (i + 1)}] for i in range(6)]
    prompts = ["The capital of France" + " is" * i if i % 2 == 0 else "x" * i + "2 + 2 = 4. def" for i in range(6)]
    reqs = [GenRequest(prompt=p, max_tokens=24) for p in prompts]
    # make a token these answers print an end token too, one that rows print first at different
    # steps (or never), so that rows end at different steps
    outs = []
    for r in reqs:
        enc = tok(plain.render(r), return_tensors="pt")
        outs.append(model.generate(**enc, max_new_tokens=24, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist())
    end = max({t for o in outs for t in o}, key=lambda t: len({o.index(t) if t in o else -1 for o in outs}))
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [old, end]
    try:
        ref = plain.generate_sync(reqs)
        assert len({r.completion_tokens for r in ref}) > 1 and any(r.finish_reason == "stop" for r in ref)
        _same(ref, fast.generate_sync(reqs))
        lp = [GenRequest(messages=m, max_tokens=10, logprobs=True, top_logprobs=3) for m in msgs]
        _same(plain.generate_sync(lp), fast.generate_sync(lp))
    finally:
        model.generation_config.eos_token_id = old


def test_greedy_equals_generate_for_prompts_tokens_and_stop_strings(tiny_model_dir):
    plain, fast = _pair(str(tiny_model_dir))
    reqs = [GenRequest(prompt="The capital of France" + " is" * i, max_tokens=12) for i in range(4)]
    _same(plain.generate_sync(reqs), fast.generate_sync(reqs))
    toks = [GenRequest(prompt_tokens=[1, 7 + i, 9, 11, 13][: 3 + i % 3], max_tokens=9) for i in range(4)]
    _same(plain.generate_sync(toks), fast.generate_sync(toks))
    text = plain.generate_sync(reqs[:1])[0].text
    stop = [GenRequest(prompt=r.prompt, max_tokens=12, stop=[text[3:5]]) for r in reqs]
    _same(plain.generate_sync(stop), fast.generate_sync(stop))


def test_samples_and_penalties_are_the_same_in_dynamic_batches_and_in_generate(tiny_model_dir):
    """The per-request draws (hf_sampling) give the same tokens whether the dynamic-batch decoder or
    generate() (with the draw as a logits processor, as JSON-schema requests use it) runs the model."""
    plain, fast = _pair(str(tiny_model_dir))
    sampled = [GenRequest(prompt="Once upon a time" + " there" * i, max_tokens=10, temperature=0.8, top_p=0.9,
                          seed=1, sample_index=i % 2) for i in range(4)]
    penalised = [GenRequest(prompt="Once upon a time" + " there" * i, max_tokens=10, repetition_penalty=1.3)
                 for i in range(3)]
    for reqs in (sampled, penalised):
        _same(plain.generate_sync(reqs), fast.generate_sync(reqs))
    # the penalty changes a greedy answer that repeats itself
    repeat = [GenRequest(prompt="a a a a a a", max_tokens=10)]
    assert plain.generate_sync(repeat)[0].text != plain.generate_sync(
        [GenRequest(prompt="a a a a a a", max_tokens=10, repetition_penalty=2.0)])[0].text


def test_top_p_and_penalty_match_transformers_processors():
    """The per-token math is transformers' RepetitionPenalty / Temperature / TopP processors, in that order."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

    from harness.backends.hf_sampling import RowSampler

    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 0.5
    history = [3, 3, 7, 11, 40]
    req = GenRequest(prompt="x", max_tokens=1, temperature=0.7, top_p=0.8, repetition_penalty=1.2, seed=5)
    ids = torch.tensor([history])
    want = TopPLogitsWarper(0.8)(ids, TemperatureLogitsWarper(0.7)(ids, RepetitionPenaltyLogitsProcessor(1.2)(
        ids, logits.clone())))
    allowed = set(torch.nonzero(torch.isfinite(want[0])).flatten().tolist())
    probs = want[0].softmax(-1)
    draws = []
    for k in range(400):
        sampler = RowSampler([GenRequest(**{**req.__dict__, "sample_index": k})], [list(history)])
        draws.append(sampler.pick(logits, [0])[0])
    assert len(allowed) < 50 and set(draws) <= allowed and len(set(draws)) > 1
    # the draws follow the processed distribution (a loose check: 400 draws)
    top = int(probs.argmax())
    assert abs(draws.count(top) / 400 - float(probs[top])) < 0.1


@pytest.mark.slow
def test_greedy_equals_generate_on_smollm2():
    import sys
    from pathlib import Path

    from harness.models import default_model_dir

    if not (default_model_dir() / "config.json").exists():
        pytest.skip("the embedded SmolLM2 is not prepared (harness models prepare)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from vllm_vs_hf import requests

    plain, fast = _pair("default")
    reqs = requests(8, 32)
    _same(plain.generate_sync(reqs), fast.generate_sync(reqs))


def test_a_model_that_ignores_the_cache_fails_loudly():
    from harness.backends.hf_batching import check_filled

    class Unfilled:
        def get_seq_length(self):
            return 0

    with pytest.raises(RuntimeError, match="did not fill the KV cache"):
        check_filled(Unfilled(), 12)


def test_a_sample_does_not_depend_on_its_batch(tiny_model_dir):
    """A sampled answer is a function of its own request (seed, sample index, prompt, settings): the same
    alone, in a batch of others, or regenerated by a resumed run that has only the missing ones to do."""
    _, fast = _pair(str(tiny_model_dir))
    spec = dict(max_tokens=12, temperature=1.0, top_p=0.9, repetition_penalty=1.03, seed=3)
    reqs = [GenRequest(messages=[{"role": "user", "content": f"Tell me about {w}."}], sample_index=s, **spec)
            for w in ("cats", "the sea", "trains") for s in range(3)]
    together = [r.text for r in fast.generate_sync(reqs)]
    alone = [fast.generate_sync([r])[0].text for r in reqs]
    assert alone == together
    resumed = [r.text for r in fast.generate_sync(reqs[4:])]
    assert resumed == together[4:]
    # samples of one prompt differ (sample index), and a different seed draws other samples
    assert len(set(together[:3])) > 1
    other = [r.text for r in fast.generate_sync([GenRequest(messages=reqs[0].messages, sample_index=s,
                                                            **{**spec, "seed": 4}) for s in range(3)])]
    assert other != together[:3]


def _no_generate(backend):
    """Make ``generate`` unavailable on the backend's model, so a test knows which path answered."""
    def refuse(*a, **k):
        raise AssertionError("model.generate was called")
    backend._model.generate = refuse


def test_json_schema_requests_decode_in_dynamic_batches_as_generate_does(tiny_model_dir):
    """Under a JSON schema, the dynamic-batch decoder (structured.RowGrammars) emits generate()'s tokens
    (xgrammar's logits processor), greedy and sampled, logprobs (of the constrained distribution) included."""
    schema = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5},
                                               "why": {"type": "string", "maxLength": 12}},
              "required": ["score", "why"], "additionalProperties": False}
    plain, fast = _pair(str(tiny_model_dir))
    msgs = [[{"role": "user", "content": "Rate this " * (i + 1)}] for i in range(4)]
    greedy = [GenRequest(messages=m, max_tokens=40, json_schema=schema, logprobs=True, top_logprobs=2) for m in msgs]
    sampled = [GenRequest(messages=m, max_tokens=40, json_schema=schema, temperature=1.0, top_p=0.9, seed=2,
                          sample_index=i) for i, m in enumerate(msgs)]
    refs = [plain.generate_sync(greedy), plain.generate_sync(sampled)]
    _no_generate(fast)
    for reqs, ref in zip((greedy, sampled), refs):
        out = fast.generate_sync(reqs)
        _same(ref, out)
        assert all(r.finish_reason == "stop" for r in out)


def test_a_shared_prompt_prefix_runs_once_with_the_unshared_texts(tiny_model_dir):
    """Prompts sharing a long prefix (a template) decode over the prefix's cache, run once per batch and
    reused by the next batch: the texts and logprobs of the unshared path."""
    from harness.backends.prefix_cache import MIN_SHARED

    template = "You are grading a response against a rubric. Read it carefully and think. " * 4
    plain, fast = _pair(str(tiny_model_dir))
    fast.max_batch = 3
    msgs = [[{"role": "user", "content": template + f"Item {i}: " + "more " * i}] for i in range(6)]
    reqs = [GenRequest(messages=m, max_tokens=16, logprobs=True) for m in msgs]
    shared = len(fast.tokenizer(fast.render(reqs[0]), add_special_tokens=False)["input_ids"])
    assert shared > MIN_SHARED
    ref = [r for b in (reqs[:3], reqs[3:]) for r in plain.generate_sync(b)]
    out = [r for b in (reqs[:3], reqs[3:]) for r in fast.generate_sync(b)]
    _same(ref, out)
    assert (fast._prefixes.misses, fast._prefixes.hits) == (1, 1)  # the second batch reused the first's prefix
    sampled = [GenRequest(messages=m, max_tokens=16, temperature=1.0, seed=4) for m in msgs[:3]]
    _same(plain.generate_sync(sampled), fast.generate_sync(sampled))


def test_the_growing_cache_holds_what_dynamic_cache_holds(tiny_model_dir):
    """hf_batching's cache writes into reserved room, reallocating when it runs out, and drops rows as
    DynamicCache does."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from harness.backends.hf_batching import growing_cache

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    grow, plain = growing_cache(model, reserve=2), DynamicCache(config=model.config)
    g, rows = torch.Generator().manual_seed(0), 3
    for step, m in enumerate((4, 1, 1, 1, 3, 1)):  # runs past the reserve twice
        kv = [(torch.randn(rows, 2, m, 4, generator=g), torch.randn(rows, 2, m, 4, generator=g)) for _ in plain.layers]
        for i, (k, v) in enumerate(kv):
            assert all(torch.equal(a, b) for a, b in zip(grow.layers[i].update(k, v), plain.layers[i].update(k, v)))
        if step == 3:
            for c in (grow, plain):
                c.batch_select_indices(torch.tensor([0, 2]))
            rows = 2
    assert grow.get_seq_length() == plain.get_seq_length() == 11
    for a, b in zip(grow.layers, plain.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
