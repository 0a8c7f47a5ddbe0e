"""lm-eval through the harness bridge versus `lm_eval --model hf` directly.

Same model (the embedded default), same local tasks (a multiple-choice and a generation
task over N documents), same settings, each run as its own process: wall time of a first run
and of a rerun (the harness answers from its call cache; lm-eval's own `--use_cache` rerun is
printed beside it). Prints the ratios harness / lm-eval and checks the numbers are equal.

    python benchmarks/lmeval_bridge.py [--docs 24]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_tasks(d: Path, n: int) -> None:
    rows = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 2)],
             "answer": 0, "target": str(a + b)} for a, b in ((i % 7 + 1, i // 7 + 2) for i in range(n))]
    data = d / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
              "doc_to_text": "Question: {{question}}\nAnswer:", "metadata": {"version": 1.0}}
    (d / "bench_mc.yaml").write_text(yaml.safe_dump({
        "task": "bench_mc", **common, "output_type": "multiple_choice", "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer", "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    (d / "bench_gen.yaml").write_text(yaml.safe_dump({
        "task": "bench_gen", **common, "output_type": "generate_until", "doc_to_target": " {{target}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 16, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}))


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=24)
    args = ap.parse_args()
    from harness.models import default_model_dir

    model = default_model_dir()
    if not (model / "config.json").exists():
        print("embedded model not prepared: run `harness models prepare`")
        return 1
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tasks(tmp, args.docs)
        ref = [str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
               "--include_path", str(tmp), "--tasks", "bench_mc,bench_gen", "--batch_size", "8", "--device", "cpu",
               "--use_cache", str(tmp / "lm_eval_cache"), "--output_path", str(tmp / "ref")]
        cfg = {"name": "bench", "models": [{"name": "smol", "backend": "hf", "model": str(model),
                                            "options": {"batch_size": 8}}],
               "tasks": [{"name": f"lm_eval.{t}", "options": {"include_path": str(tmp)}}
                         for t in ("bench_mc", "bench_gen")]}
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        ours = [str(BIN / "harness"), "run", str(tmp / "run.yaml"), "--out", str(tmp / "run")]
        times = {"lm_eval first": timed(ref, env), "harness first": timed(ours, env),
                 "lm_eval rerun (--use_cache)": timed(ref, env), "harness rerun": timed(ours, env)}
        res = json.loads((tmp / "run" / "results.json").read_text())["results"]
        refres = {}
        for f in (tmp / "ref").rglob("results_*.json"):
            refres.update(json.loads(f.read_text())["results"])
    for k, v in times.items():
        print(f"{k:30s} {v:7.1f} s")
    print(f"ratio first run  harness / lm_eval: {times['harness first'] / times['lm_eval first']:.3f} (goal <= 1.1)")
    print(f"ratio rerun      harness rerun / lm_eval first: {times['harness rerun'] / times['lm_eval first']:.3f} "
          f"(goal <= 0.05); lm_eval --use_cache rerun / first: "
          f"{times['lm_eval rerun (--use_cache)'] / times['lm_eval first']:.3f}")
    same = (res["lm_eval.bench_mc"]["smol"]["acc"] == refres["bench_mc"]["acc,none"]
            and res["lm_eval.bench_gen"]["smol"]["exact_match"] == refres["bench_gen"]["exact_match,none"])
    print(f"numbers equal: {same} (acc {res['lm_eval.bench_mc']['smol']['acc']:.4f}, "
          f"exact_match {res['lm_eval.bench_gen']['smol']['exact_match']:.4f})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
