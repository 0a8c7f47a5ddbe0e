"""Time `make_report` on 20 models x 6 benchmarks x 1,000 instances, 10,000 bootstrap rounds.

Usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/report_speed.py [--all-pairs] [--bootstrap B]

Builds a synthetic run directory (run-directory contract: results.json + samples/*.jsonl)
in a temporary folder, then times the whole report (read, leaderboard CIs, significance with
every test, the paper's tables, figures as PNG and SVG, HTML) and each stage separately. The
results carry the keys the tasks write (Multifaceted Bench per source and dimension, AlpacaEval
LC, RealToxicityPrompts, IFEval's four accuracies), and four of the 20 models are system-message
variants (``<base>@sys=none`` / ``@sys=generic``), so every table has rows. Target: under 15 s on
the 2-core machine.
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
    "ifeval": "accuracy",
}
SOURCES = ["alpaca_eval_2", "flask", "koala", "mt_bench", "self_instruct"]
N_VARIANTS = 4  # the last models are model-01@sys=none, model-01@sys=generic, model-02@sys=none, ...


def model_names(n_models: int) -> list[str]:
    plain = max(1, n_models - N_VARIANTS)
    names = [f"model-{m:02d}" for m in range(plain)]
    for k in range(n_models - plain):
        names.append(f"model-{1 + k // 2:02d}@sys={('none', 'generic')[k % 2]}")
    return names


def task_metrics(task: str, scores: np.ndarray, rng) -> dict:
    """The headline and the other keys the real task writes (values: plausible, not computed)."""
    mean = float(scores.mean())
    if task == "multifaceted_bench":
        out = {"score": mean, "score_lower": mean - 0.05, "score_upper": mean + 0.05}
        for k, src in enumerate(SOURCES):
            v = float(scores[k::5].mean())
            out.update({f"source.{src}": v, f"source.{src}_lower": v - 0.1, f"source.{src}_upper": v + 0.1})
        for d in range(4):
            out.update({f"dim{d}": mean + d * 0.01, f"dim{d}_lower": mean - 0.05, f"dim{d}_upper": mean + 0.05})
        return {**out, "primary_metric": "score", "official_metrics": ["score"]}
    if task == "alpaca_eval":
        return {"win_rate": 100 * mean, "standard_error": 1.5, "length_controlled_winrate": 100 * mean + 1,
                "lc_source": "GLM fit length_controlled_v1, pinned df_gamed.csv", "n_total": len(scores),
                "primary_metric": "win_rate", "official_metrics": ["win_rate", "length_controlled_winrate"]}
    if task == "real_toxicity_prompts":
        out = {"expected_max_toxicity": mean, "toxicity_probability": mean, "primary_metric": "expected_max_toxicity",
               "lower_is_better": True, "scorer": "detoxify"}
        for k in (1, 2, 3):
            out[f"dist{k}"] = float(rng.uniform(0.5, 0.9))
        return out
    if task == "ifeval":
        return {"prompt_level_strict_acc": mean, "prompt_level_strict_acc_stderr": 0.01,
                "inst_level_strict_acc": mean + 0.05, "prompt_level_loose_acc": mean + 0.02,
                "inst_level_loose_acc": mean + 0.07, "primary_metric": "prompt_level_strict_acc", "scorer": "lm_eval"}
    return {"score": mean}


def make_run(root: Path, n_models: int, n_instances: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    run = root / "run"
    (run / "samples").mkdir(parents=True)
    results = {}
    names = model_names(n_models)
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
                elif kind == "accuracy":
                    scores = (latent > 0).astype(float)
                else:
                    scores = (latent < -1.2).astype(float)
                model = names[m]
                for i in range(n_instances):
                    row = {"task": task, "instance_id": f"{task}-{i}", "model": model, "score": float(scores[i]),
                           "prompt": f"prompt {i}", "response": f"response of {model} to {i} " * 3}
                    if kind == "rubric":
                        row["source"] = SOURCES[i % 5]
                        row["dims"] = {f"dim{k}": float(dims[i, k]) for k in range(4)}
                    fh.write(json.dumps(row) + "\n")
                results[task][model] = {**task_metrics(task, scores, rng), "n": n_instances}
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
        start, cpu = time.perf_counter(), time.process_time()
        make_report([run], Path(tmp) / "out", baseline="model-00", pairs=pairs, B=args.bootstrap)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        size = (Path(tmp) / "out" / "report.html").stat().st_size / 1e6
    print(f"make_report: {args.models} models x {len(TASKS)} benchmarks x {args.instances} instances, "
          f"B={args.bootstrap}, pairs={pairs}: {total:.1f} s ({cpu:.1f} s CPU: on a shared machine the wall "
          f"time includes waiting for a core) (report.html {size:.1f} MB)")


if __name__ == "__main__":
    main()
