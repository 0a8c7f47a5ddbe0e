"""Shared-prefix judging on the hf backend: the rubric prompts of one answer run their common
prefix once, with the same scores as the unshared path (within 1e-5)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness.backends.hf import HFBackend
from harness.backends.prefix_cache import groups
from harness.pipeline import Run
from harness.records import Completion
from judges.rubric_judge import RubricJudge
from tasks.multifaceted.release import record_to_instance

REPO = Path(__file__).resolve().parents[1]


def judge_requests(answers: int, words: int = 12):
    """Multifaceted logprob-judge requests: ``answers`` answers x 4 rubrics, in the judge's order."""
    rec = json.loads((REPO / "tasks/multifaceted/readme_example.json").read_text())
    judge = RubricJudge({"method": "logprob"})
    calls = []
    for k in range(answers):
        inst = record_to_instance(dict(rec, id=f"i{k % 2}"), k % 2)  # two answers per instance
        text = f"Answer {k}: " + " ".join(f"point {j} of {k}." for j in range(words + 3 * k))
        calls += judge.calls(inst, Completion("multifaceted_bench", inst.id, f"m{k}", [text]))
    return judge, calls, [Run._judge_request(c) for c in calls]


def pair(path: str):
    """The unshared path (generate) and the shared one, over one loaded model."""
    plain = HFBackend(path, prefix_cache=0, dynamic_batching=False)
    shared = HFBackend(path)
    shared._model, shared._tok = plain.load()
    return plain, shared


def assert_same(judge, calls, a, b):
    for call, x, y in zip(calls, a, b):
        assert (x.text, x.finish_reason, x.prompt_tokens, x.completion_tokens) == \
               (y.text, y.finish_reason, y.prompt_tokens, y.completion_tokens)
        assert [t for t, _ in x.logprobs[0].top] == [t for t, _ in y.logprobs[0].top]
        # token log-probabilities to float32 rounding over a long cached prefix (a few 1e-6 relative);
        # the judge's score within 1e-5 relative (a 1-5 score: up to ~5e-5 absolute; float32 over a cached
        # prefix was measured at 1.2e-5 absolute, 4.5e-6 relative, on SmolLM2 on one of the CI machines)
        assert x.logprobs[0].logprob == pytest.approx(y.logprobs[0].logprob, abs=5e-5)
        for (_, p), (_, q) in zip(x.logprobs[0].top, y.logprobs[0].top):
            assert p == pytest.approx(q, abs=5e-5)
        px, py = judge.parse_result(x, call), judge.parse_result(y, call)
        assert px.ok == py.ok and (not px.ok or px.value == pytest.approx(py.value, rel=1e-5, abs=1e-5))


def test_groups_cover_every_row_and_share_only_real_prefixes():
    rng = random.Random(0)
    for _ in range(300):
        rows = [[rng.randint(0, 2) for _ in range(rng.randint(1, 60))] for _ in range(rng.randint(1, 9))]
        plan = groups(rows, min_shared=3)
        assert sorted(i for _, m, _ in plan for i in m) == list(range(len(rows)))
        for n, members, src in plan:
            assert all(rows[i][:n] == rows[src][:n] and len(rows[i]) > n for i in members)
    base = list(range(100))
    rows = [base + [1] * 50 + [5], base + [1] * 50 + [6], base + [2] * 40 + [5], base + [2] * 40 + [6], [9] * 10]
    # the prefix all share once, each answer's longer prefix extending it, the unrelated row alone
    assert groups(rows) == [(100, [], 0), (150, [0, 1], 0), (140, [2, 3], 2), (0, [4], 4)]


def test_shared_prefix_equals_unshared_on_tiny_model(tiny_model_dir):
    judge, calls, reqs = judge_requests(3)
    plain, shared = pair(str(tiny_model_dir))
    ref = plain.generate_sync(reqs)
    assert_same(judge, calls, ref, shared.generate_sync(reqs))
    assert shared._prefixes.misses >= 3  # one prefix per answer at least: the shared path ran
    # one answer's rubric prompts split over two batches: the second part reuses the stored prefix
    fresh = HFBackend(str(tiny_model_dir))
    fresh._model, fresh._tok = plain.load()
    out = fresh.generate_sync(reqs[:2]) + fresh.generate_sync(reqs[2:4])
    assert fresh._prefixes.hits >= 1
    assert_same(judge, calls[:4], ref[:4], out)


def test_one_token_prompts_keep_the_callers_order(tiny_model_dir):
    # the call layer sorts a batch's misses by sort_key: one answer's rubric prompts stay together
    _, _, reqs = judge_requests(3)
    b = HFBackend(str(tiny_model_dir))
    order = sorted(range(len(reqs)), key=lambda i: b.sort_key(reqs[i]))
    assert order == list(range(len(reqs)))


@pytest.mark.slow
def test_shared_prefix_equals_unshared_on_smollm2():
    from harness.models import default_model_dir

    if not (default_model_dir() / "config.json").exists():
        pytest.skip("the embedded SmolLM2 is not prepared (harness models prepare)")
    judge, calls, reqs = judge_requests(2, words=4)
    plain, shared = pair("default")
    assert_same(judge, calls, plain.generate_sync(reqs), shared.generate_sync(reqs))


@pytest.mark.parametrize("workers", [1, 2])
def test_served_judge_shares_prefixes_with_the_same_scores(tiny_model_dir, tmp_path, workers):
    # the local judge path: the call layer -> `harness serve` over hf -> batches of concurrent requests;
    # with two workers, two batches at once (their prefixes computed side by side)
    import asyncio
    import threading
    import time

    from harness.backends.openai_backend import OpenAIBackend
    from harness.calls import CallLayer, CallSettings
    from harness.serve import ServerThread, build_app

    judge, calls, reqs = judge_requests(4)
    plain, served = pair(str(tiny_model_dir))
    served.max_batch = 4
    ref = plain.generate_sync(reqs)
    running, most, lock = [0], [0], threading.Lock()
    real = served.generate_sync

    def counted(batch):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)  # long enough for a second batch to start beside this one
        try:
            return real(batch)
        finally:
            with lock:
                running[0] -= 1
    served.generate_sync = counted
    with ServerThread(build_app(served, "tiny", workers=workers)) as srv:
        layer = CallLayer(tmp_path / "c.sqlite", CallSettings(concurrency=16))
        out = asyncio.run(layer.run(OpenAIBackend("tiny", base_url=srv.base_url), reqs))
    assert served._prefixes.misses >= 4  # the shared path ran: at least one prefix per answer
    assert most[0] == workers
    assert_same(judge, calls, ref, out)
