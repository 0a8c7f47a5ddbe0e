"""Time `make_report` on 20 models x 5 benchmarks x 1,000 instances, 10,000 bootstrap rounds.

Usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/report_speed.py [--all-pairs] [--bootstrap B]

Builds a synthetic run directory (run-directory contract: results.json + samples/*.jsonl)
in a temporary folder, then times the whole report (read, leaderboard CIs, significance with
every test, plots, HTML) and each stage separately. Target: under 30 s on the 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reports import leaderboard, significance  # noqa: E402
from reports.report import make_report  # noqa: E402

TASKS = {  # task -> (score generator, metric name)
    "multifaceted_bench": "rubric",
    "alpaca_eval": "preference",
    "arena_hard": "battle",
    "mt_bench": "single",
    "real_toxicity_prompts": "binary",
}
SOURCES = ["alpaca_eval", "flask", "koala", "mt_bench", "self_instruct"]


def make_run(root: Path, n_models: int, n_instances: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    run = root / "run"
    (run / "samples").mkdir(parents=True)
    results = {}
    for task, kind in TASKS.items():
        results[task] = {}
        skill = rng.normal(size=n_models) * 0.3
        difficulty = rng.normal(size=n_instances)
        with open(run / "samples" / f"{task}.jsonl", "w") as fh:
            for m in range(n_models):
                latent = skill[m] - difficulty + rng.normal(size=n_instances)
                if kind == "rubric":
                    dims = np.clip(np.round(3 + latent[:, None] + rng.normal(size=(n_instances, 4)) * 0.5), 1, 5)
                    scores = dims.mean(axis=1)
                elif kind == "preference":
                    scores = 1 / (1 + np.exp(-latent))
                elif kind == "battle":
                    scores = np.clip(np.round(2 * (1 / (1 + np.exp(-latent)))) / 2, 0, 1)
                elif kind == "single":
                    scores = np.clip(np.round(6 + 2 * latent), 1, 10)
                else:
                    scores = (latent < -1.2).astype(float)
                model = f"model-{m:02d}"
                for i in range(n_instances):
                    row = {"task": task, "instance_id": f"{task}-{i}", "model": model, "score": float(scores[i]),
                           "prompt": f"prompt {i}", "response": f"response of {model} to {i} " * 3}
                    if kind == "rubric":
                        row["source"] = SOURCES[i % 5]
                        row["dims"] = {f"rubric{k}": float(dims[i, k]) for k in range(4)}
                    fh.write(json.dumps(row) + "\n")
                results[task][model] = {"score": float(scores.mean()), "n": n_instances}
    (run / "results.json").write_text(json.dumps({"run": {"name": "speed"}, "results": results}))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=10_000)
    ap.add_argument("--all-pairs", action="store_true")
    args = ap.parse_args()
    pairs = "all" if args.all_pairs else "baseline"
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.models, args.instances)
        t0 = time.perf_counter()
        merged = leaderboard.merge_runs([run])
        t1 = time.perf_counter()
        leaderboard.build(merged, B=args.bootstrap)
        t2 = time.perf_counter()
        sig = significance.compare(merged.samples, baseline="model-00", pairs=pairs, B=args.bootstrap)
        t3 = time.perf_counter()
        print(f"stages: read {t1 - t0:.2f} s, leaderboard CIs {t2 - t1:.2f} s, "
              f"significance ({len(sig['comparisons'])} comparisons, every test) {t3 - t2:.2f} s")
        start = time.perf_counter()
        make_report([run], Path(tmp) / "out", baseline="model-00", pairs=pairs, B=args.bootstrap)
        total = time.perf_counter() - start
        size = (Path(tmp) / "out" / "report.html").stat().st_size / 1e6
    print(f"make_report: {args.models} models x {len(TASKS)} benchmarks x {args.instances} instances, "
          f"B={args.bootstrap}, pairs={pairs}: {total:.1f} s (report.html {size:.1f} MB)")


if __name__ == "__main__":
    main()
