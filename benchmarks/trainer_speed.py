"""Training speed and memory of each trainer on CPU: tokens/s and peak RSS.

    python benchmarks/trainer_speed.py                       # tiny random model, all four methods
    python benchmarks/trainer_speed.py --model ~/.cache/harness/models/smollm2-135m-instruct --steps 5
    python benchmarks/trainer_speed.py --threads 2 --methods sft dpo

Each method runs in its own process (peak RSS is per process; ``ru_maxrss``), with the torch thread count
set explicitly (two threads on two shared cores can be 20x slower than one). Tokens/s counts the tokens of
the sequences a step trains on (pairs count both sides) over the training loop's wall time, excluding model
loading and data preparation. Data: the MT-Bench demo rows (``demo:mt_bench``), see trainer/demo_data.py.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sequence_tokens(method: str, trainer) -> list[int]:
    """Tokens one example puts through the model (pairs: both sides, each with its prompt)."""
    out = []
    for ex in trainer.train_dataset:
        if "input_ids" in ex:  # sft
            out.append(len(ex["input_ids"]))
        elif "prompt_ids" in ex:  # dpo
            out.append(2 * len(ex["prompt_ids"]) + len(ex["chosen_ids"]) + len(ex["rejected_ids"]))
        elif "chosen_ids" in ex:  # rm
            out.append(len(ex["chosen_ids"]) + len(ex["rejected_ids"]))
        elif "chosen_input_ids" in ex:  # orpo
            out.append(len(ex["chosen_input_ids"]) + len(ex["rejected_input_ids"]))
        else:
            raise ValueError(f"{method}: cannot count tokens in columns {list(ex)}")
    return out


def run_one(method: str, model: str, steps: int, batch: int, threads: int, max_length: int, out_dir: str) -> dict:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import importlib

    import torch

    from trainer.config import from_dict

    torch.set_num_threads(threads)
    data = "demo:mt_bench_sft" if method == "sft" else "demo:mt_bench"
    cfg = from_dict({"model": model, "output_dir": out_dir, "format": "tokenizer", "max_length": max_length,
                     "threads": threads, "data": {"path": data, "seed": 1},
                     "training": {"max_steps": steps, "per_device_train_batch_size": batch,
                                  "learning_rate": 1e-5}}, method)
    t0 = time.perf_counter()
    trainer, tok, prepared = importlib.import_module(f"trainer.{method}").build_trainer(cfg)
    setup_s = time.perf_counter() - t0
    lengths = _sequence_tokens(method, trainer)
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    examples = steps * batch
    # the sampler walks the shuffled dataset; average length x examples seen is the token count
    tokens = sum(lengths) / len(lengths) * examples
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"method": method, "model": Path(model).name, "threads": threads, "steps": steps, "batch": batch,
            "train_rows": len(lengths), "mean_seq_tokens": round(sum(lengths) / len(lengths), 1),
            "setup_s": round(setup_s, 2), "train_s": round(train_s, 2), "s_per_step": round(train_s / steps, 3),
            "tokens_per_s": round(tokens / train_s, 1), "peak_rss_gb": round(rss_gb, 2),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model dir (default: a tiny random model built in a temp dir)")
    ap.add_argument("--methods", nargs="+", default=["sft", "dpo", "orpo", "rm"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.one:
            print(json.dumps(run_one(args.one, model, args.steps, args.batch, args.threads, args.max_length,
                                     str(Path(tmp) / "out"))))
            return
        if model is None:
            from harness.tiny import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        rows = []
        for m in args.methods:
            cmd = [sys.executable, __file__, "--one", m, "--model", model, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--threads", str(args.threads), "--max-length", str(args.max_length)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{m}: failed")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    header = ["method", "model", "threads", "batch", "steps", "mean_seq_tokens", "s_per_step", "tokens_per_s",
              "peak_rss_gb", "loss_first", "loss_last"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(r[h]) if not isinstance(r[h], float) else f"{r[h]:.4g}" for h in header) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
