"""Generation throughput of the hf backend (generate() and dynamic batches) versus vLLM on one model.

Every backend gets the same chat requests (greedy, the same max_tokens) through its own
``generate_sync`` (no cache), after one warm-up call each; tokens/s counts the completion
tokens actually produced. hf runs four ways in the same run: ``model.generate`` (the path
before dynamic batching: ``dynamic_batching=False``) and dynamic batches
(``harness/backends/hf_batching.py``), each at ``--hf-batch`` rows per call and at all
prompts in one call (the width vLLM's engine gets), plus transformers' own continuous batching
(``generate_batch``, paged attention). vLLM runs where it is installed:

    scripts/setup_vllm_cpu.sh
    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/vllm_vs_hf.py \
        [--prompts 32] [--max-tokens 64] [--hf-batch 8] [--dtype float32] [--model default]

Without vLLM (``--no-vllm``, or it does not import) the hf rows are printed alone, with the
figure measured before (2 contended cores, SmolLM2-135M float32, 32 prompts x 64 tokens,
greedy: hf 52.0 tok/s at batch 8, vllm 165.0 tok/s, ratio 3.17, all 32 greedy texts
identical). On a GPU machine use --dtype bfloat16 --device cuda (hf) and the plain `vllm` package.
"""
from __future__ import annotations

import argparse
import importlib.util
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


def continuous(backend, reqs, dtype: str) -> tuple[float, int, list[str]]:
    """transformers' own continuous batching (``generate_batch`` over a paged KV cache), greedy, on the
    prompt ids the hf backend renders; a second copy of the weights with ``attn_implementation="paged|sdpa"``."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from harness.backends.hf_batching import prompt_ids, stop_ids

    model, tok = backend.load()
    paged = AutoModelForCausalLM.from_pretrained(backend.path, dtype=getattr(torch, dtype),
                                                 attn_implementation="paged|sdpa").eval()
    ids = prompt_ids(backend, reqs)
    gc = GenerationConfig(max_new_tokens=reqs[0].max_tokens, do_sample=False, eos_token_id=sorted(stop_ids(model, tok)),
                          pad_token_id=tok.pad_token_id, num_blocks=512, block_size=32, max_batch_tokens=1024)
    with torch.no_grad():
        paged.generate_batch(inputs=ids[:2], generation_config=gc)  # warm-up
        t0 = time.perf_counter()
        out = paged.generate_batch(inputs=ids, generation_config=gc)
        wall = time.perf_counter() - t0
    # results are keyed by request id, in submission order
    rows = [list(out[k].generated_tokens) for k in sorted(out, key=lambda k: int(str(k).rsplit("_", 1)[-1]))]
    return wall, sum(len(r) for r in rows), [tok.decode(r, skip_special_tokens=True) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--hf-batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", help="both backends (bfloat16 is vLLM's usual CPU/GPU dtype)")
    p.add_argument("--device", default="cpu", help="hf backend device")
    p.add_argument("--no-vllm", action="store_true", help="hf only")
    args = p.parse_args()
    # a like-for-like default on CPU: vLLM's worker on one core, as hf with OMP_NUM_THREADS=1
    # (vLLM's own default, "auto", binds a thread to every physical core it may use)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")

    from harness.backends.hf import HFBackend

    reqs = requests(args.prompts, args.max_tokens)
    base = HFBackend(args.model, dtype=args.dtype, batch_size=args.hf_batch, device=args.device,
                     dynamic_batching=False)
    fast = HFBackend(args.model, dtype=args.dtype, batch_size=args.hf_batch, device=args.device)
    fast._model, fast._tok = base.load()
    result = {"model": args.model, "prompts": args.prompts, "max_tokens": args.max_tokens, "dtype": args.dtype,
              "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")}, "hf": {}}
    texts = {}
    for name, backend, batch in (("generate", base, args.hf_batch), ("dynamic", fast, args.hf_batch),
                                 ("generate_all", base, len(reqs)), ("dynamic_all", fast, len(reqs))):
        wall, tok, texts[name] = timed(backend, reqs, batch)
        result["hf"][name] = {"batch": batch, "wall_s": round(wall, 2), "tokens": tok,
                              "tok_per_s": round(tok / wall, 1),
                              "same_greedy_texts": sum(a == b for a, b in zip(texts[name], texts["generate"]))}
    try:  # transformers' continuous batching, as the issue asked to measure
        wall, tok, texts["transformers_continuous"] = continuous(fast, reqs, args.dtype)
        result["hf"]["transformers_continuous"] = {
            "batch": len(reqs), "wall_s": round(wall, 2), "tokens": tok, "tok_per_s": round(tok / wall, 1),
            "same_greedy_texts": sum(a == b for a, b in zip(texts["transformers_continuous"], texts["generate"]))}
    except Exception as e:  # an older transformers without generate_batch / paged attention
        result["hf"]["transformers_continuous"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    ref = result["hf"]["generate"]["tok_per_s"]
    for row in result["hf"].values():
        if "tok_per_s" in row:
            row["x_generate"] = round(row["tok_per_s"] / ref, 2)
    vl = None
    if args.no_vllm or importlib.util.find_spec("vllm") is None:
        result["vllm"] = "not run here (not installed, or --no-vllm): see the docstring for the figure measured before"
    else:
        from harness.backends.vllm_backend import VLLMBackend

        del base, fast
        t0 = time.perf_counter()
        vl = VLLMBackend(args.model, dtype=args.dtype, max_model_len=1024, enforce_eager=True)
        vl.load()
    if vl is not None:
        init = time.perf_counter() - t0
        vl_wall, vl_tok, vl_text = timed(vl, reqs, len(reqs))  # the engine takes the whole set at once
        vps = vl_tok / vl_wall
        result["vllm"] = {"init_s": round(init, 1), "wall_s": round(vl_wall, 2), "tokens": vl_tok,
                          "tok_per_s": round(vps, 1),
                          "same_greedy_texts_as_hf": sum(a == b for a, b in zip(texts["generate"], vl_text))}
        result["hf_over_vllm"] = {k: round(r["tok_per_s"] / vps, 2) for k, r in result["hf"].items() if "tok_per_s" in r}
        vl.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    main()
