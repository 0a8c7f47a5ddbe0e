"""Generation throughput of the vllm backend versus the hf backend on the same model.

Both backends get the same chat requests (greedy, the same max_tokens) through their
own ``generate_sync`` (no cache), after one warm-up call each; tokens/s counts the
completion tokens actually produced. Needs the vLLM environment:

    scripts/setup_vllm_cpu.sh
    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/vllm_vs_hf.py \
        [--prompts 32] [--max-tokens 64] [--hf-batch 8] [--dtype float32] [--model default]

Measured here (2 contended cores, SmolLM2-135M float32, 32 prompts x 64 tokens, greedy):
hf 52.0 tok/s (batch 8), vllm 165.0 tok/s, ratio 3.17, all 32 greedy texts identical.
On a GPU machine use --dtype bfloat16 --device cuda (hf) and the plain `vllm` package.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOPICS = ["the sea", "a city at night", "photosynthesis", "prime numbers", "a job interview", "Python lists",
          "the moon landing", "bread baking", "chess openings", "rainforests", "the water cycle", "jazz"]


def requests(n: int, max_tokens: int):
    from harness.backends.base import GenRequest

    return [GenRequest(messages=[{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}"
                                                             f" (variant {i})."}],
                       max_tokens=max_tokens, temperature=0.0) for i in range(n)]


def timed(backend, reqs, batch: int) -> tuple[float, int, list[str]]:
    backend.generate_sync(reqs[:2])  # warm-up: load, first-call allocations
    t0 = time.perf_counter()
    out = []
    for j in range(0, len(reqs), batch):
        out += backend.generate_sync(reqs[j:j + batch])
    wall = time.perf_counter() - t0
    return wall, sum(r.completion_tokens for r in out), [r.text for r in out]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--hf-batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", help="both backends (bfloat16 is vLLM's usual CPU/GPU dtype)")
    p.add_argument("--device", default="cpu", help="hf backend device")
    args = p.parse_args()
    # a like-for-like default on CPU: vLLM's worker on one core, as hf with OMP_NUM_THREADS=1
    # (vLLM's own default, "auto", binds a thread to every physical core it may use)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")

    from harness.backends.hf import HFBackend
    from harness.backends.vllm_backend import VLLMBackend

    reqs = requests(args.prompts, args.max_tokens)
    hf = HFBackend(args.model, dtype=args.dtype, batch_size=args.hf_batch, device=args.device)
    hf_wall, hf_tok, hf_text = timed(hf, reqs, args.hf_batch)
    del hf
    t0 = time.perf_counter()
    vl = VLLMBackend(args.model, dtype=args.dtype, max_model_len=1024, enforce_eager=True)
    vl.load()
    init = time.perf_counter() - t0
    vl_wall, vl_tok, vl_text = timed(vl, reqs, len(reqs))  # the engine takes the whole set at once
    result = {
        "model": args.model, "prompts": args.prompts, "max_tokens": args.max_tokens, "dtype": args.dtype,
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")},
        "hf": {"batch": args.hf_batch, "wall_s": round(hf_wall, 2), "tokens": hf_tok,
               "tok_per_s": round(hf_tok / hf_wall, 1)},
        "vllm": {"init_s": round(init, 1), "wall_s": round(vl_wall, 2), "tokens": vl_tok,
                 "tok_per_s": round(vl_tok / vl_wall, 1)},
        "ratio_vllm_over_hf": round((vl_tok / vl_wall) / (hf_tok / hf_wall), 2),
        "same_greedy_texts": sum(a == b for a, b in zip(hf_text, vl_text)),
    }
    print(json.dumps(result, indent=2))
    vl.close()


if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    main()
