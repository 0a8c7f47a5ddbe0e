"""Reward scoring on vLLM's pooling runner (vllm-cpu) against the hf scorer on the same candidates.

Runs in the environment of scripts/setup_vllm_cpu.sh (skipped where vllm is not importable):

    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 .venv-vllm/bin/python -m pytest tests/vllm_cpu -q -p no:cacheprovider
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")

from harness.models import default_model_dir  # noqa: E402
from tests.support.reward_models import build_seq_cls_rm, build_value_head_rm  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

MODEL = default_model_dir()
SYSTEM = "The user is a nurse who wants short answers with one safety caveat."
CONVS = [
    (SYSTEM, ["How should I store insulin?"], ["In the fridge, 2-8 C; never freeze it."]),
    (None, ["Name a prime number."], ["7"]),
    (SYSTEM, ["What is a normal resting heart rate?"],
     ["For adults, 60 to 100 beats per minute. Check with a doctor if it is often outside that range."]),
    # a multi-turn answer is scored on the whole conversation
    (SYSTEM, ["Hi!", "What dose of paracetamol is safe?"],
     ["Hello. How can I help?", "Up to 4 g a day for adults; less with liver disease."]),
]


@pytest.fixture(scope="module")
def seq_cls_rm(tmp_path_factory):
    if not (MODEL / "config.json").exists():
        pytest.skip(f"{MODEL}: run `harness models prepare` first")
    # SmolLM2's shape and tokenizer, random weights: a one-label classifier as `harness train rm` writes
    return build_seq_cls_rm(MODEL, tmp_path_factory.mktemp("rm") / "seqcls")


@pytest.fixture(scope="module")
def value_head_rm(tmp_path_factory):
    if not (MODEL / "config.json").exists():
        pytest.skip(f"{MODEL}: run `harness models prepare` first")
    return build_value_head_rm(MODEL, tmp_path_factory.mktemp("rm") / "janus-rm")


def _rewards(path, engine, tmp_path, monkeypatch):
    from harness.scorers import RewardModelScorer

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    args = {"engine_args": {"enforce_eager": True}} if engine == "vllm" else {}
    scorer = RewardModelScorer(str(path), engine=engine, **args)
    try:
        return scorer.batcher.score(CONVS), scorer.version
    finally:
        scorer.close()


@pytest.mark.parametrize("which", ["seq_cls_rm", "value_head_rm"])
def test_vllm_rewards_equal_hf_rewards(which, request, tmp_path, monkeypatch):
    path = request.getfixturevalue(which)
    want, hf_version = _rewards(path, "hf", tmp_path, monkeypatch)
    got, vllm_version = _rewards(path, "vllm", tmp_path, monkeypatch)
    assert got == pytest.approx(want, abs=1e-3)
    assert len(set(round(r, 4) for r in want)) == len(want)  # the candidates are told apart
    assert vllm_version != hf_version  # stored scores of one engine are not reused for the other
