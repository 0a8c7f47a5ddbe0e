"""Reward scoring throughput: bucketed cross-prompt batches vs per-prompt batches of 8 (the JANUS reference).

Best of ``--repeats`` alternating runs for each method. The pool: the first-turn answers of 16 models to 64 MT-Bench questions (real answers, so the length spread is
a real one), with a preference system message, scored by a small random JANUS-RM-layout reward model (value
head, left padding, positions from the mask) on CPU. Both methods score the same 1024 candidates; the script
prints candidates/s of each, the ratio, and the largest reward difference (must be < 1e-4).

    OMP_NUM_THREADS=1 python benchmarks/rerank_scoring.py [--prompts 64] [--candidates 16] [--max-tokens 16384]
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYSTEM = ("You are a helpful assistant for a user who values concise, well-structured answers with one concrete "
          "example, a warm but professional tone, and no unnecessary jargon.")


def data_dir() -> Path:
    env = os.environ.get("HARNESS_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def load_pool(n_prompts: int, n_candidates: int) -> list[list[tuple]]:
    root = data_dir() / "mt_bench"
    questions = [json.loads(x) for x in (root / "question.jsonl").read_text().splitlines()][:n_prompts]
    answers: dict[int, list[str]] = {}
    files = sorted((root / "model_answer").glob("*.jsonl"))
    if len(files) < n_candidates:
        raise ValueError(f"{root / 'model_answer'}: {len(files)} answer files, need {n_candidates}")
    for f in files[:n_candidates]:
        for line in f.read_text().splitlines():
            a = json.loads(line)
            answers.setdefault(a["question_id"], []).append(a["choices"][0]["turns"][0])
    return [[(SYSTEM, q["turns"][0], a) for a in answers[q["question_id"]][:n_candidates]] for q in questions]


def build_value_head_rm(out: Path, hidden: int, layers: int) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, LlamaModel

    from harness.tiny import build_tiny_model

    lm = build_tiny_model(out.parent / "lm", hidden_size=hidden, layers=layers)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(lm)
    base = LlamaModel(config)
    state = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
    state["value_head.weight"] = torch.randn(1, config.hidden_size) / hidden ** 0.5
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(lm).save_pretrained(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16384, help="padded tokens per bucketed batch")
    p.add_argument("--max-length", type=int, default=2048, help="reward model input limit (JANUS: 2 x 1024)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2,
                   help="alternate the two methods this many times and keep each one's best time "
                        "(the machine is shared: load changes during a run would otherwise favour one side)")
    args = p.parse_args(argv)

    import torch

    from harness.backends.rm_batching import BucketedScorer, score_per_prompt
    from harness.backends.reward_model import load_reward_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    groups = load_pool(args.prompts, args.candidates)
    flat = [t for g in groups for t in g]
    with tempfile.TemporaryDirectory() as tmp:
        rm = load_reward_model(build_value_head_rm(Path(tmp) / "rm", args.hidden, args.layers),
                               max_length=args.max_length)
        lengths = [len(rm.encode(*t)) for t in flat]
        print(f"pool: {args.prompts} prompts x {args.candidates} candidates = {len(flat)}; tokens per candidate "
              f"min {min(lengths)} mean {sum(lengths) / len(lengths):.0f} max {max(lengths)}; "
              f"model hidden {args.hidden} x {args.layers} layers, {torch.get_num_threads()} thread(s)")

        score_per_prompt(rm, [groups[0][:8]])  # warm-up
        batcher = BucketedScorer(rm, max_tokens=args.max_tokens)  # its default: a batch per free core
        one = BucketedScorer(rm, max_tokens=args.max_tokens, workers=1)  # the same threads as the reference
        t_ref = t_one = t_new = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            reference = [x for g in score_per_prompt(rm, groups, batch_size=8) for x in g]
            t_ref = min(t_ref, time.perf_counter() - t0)
            t0 = time.perf_counter()
            single = one.score(flat)
            t_one = min(t_one, time.perf_counter() - t0)
            t0 = time.perf_counter()
            bucketed = batcher.score(flat)
            t_new = min(t_new, time.perf_counter() - t0)

    diff = max(abs(a - b) for out in (single, bucketed) for a, b in zip(reference, out))
    ref_rate, one_rate, new_rate = len(flat) / t_ref, len(flat) / t_one, len(flat) / t_new
    print(f"per-prompt batches of 8 (reference): {t_ref:7.1f} s  {ref_rate:7.2f} candidates/s")
    print(f"bucketed cross-prompt batches:       {t_one:7.1f} s  {one_rate:7.2f} candidates/s "
          f"(budget {args.max_tokens} tokens, pad tolerance {batcher.pad_tolerance}, 1 batch at a time)")
    print(f"bucketed, {batcher.workers} batch(es) at a time:       {t_new:7.1f} s  {new_rate:7.2f} candidates/s")
    print(f"ratio: {one_rate / ref_rate:.2f}x with the reference's threads, {new_rate / ref_rate:.2f}x with "
          f"{batcher.workers} batch(es) at a time   max |reward difference|: {diff:.2e}")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
