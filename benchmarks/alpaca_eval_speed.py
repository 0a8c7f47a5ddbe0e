"""AlpacaEval leaderboard speed: seconds per model over all given annotation files.

Times (1) the harness's file leaderboard end to end (JSON load + metrics + LC prediction when a
difficulty file is given) and (2) the metric step alone, next to alpaca_eval's own ``get_winrate``
on the same frames when the ``alpaca-eval`` package is installed.

Usage: python benchmarks/alpaca_eval_speed.py [--annotations DIR ...] [--instruction-difficulty CSV] [--repeats 5]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from reports import alpaca_eval_metrics as M  # noqa: E402
from tasks.alpaca_eval import AlpacaEval, find_annotation_files, read_annotations  # noqa: E402


def alpaca_eval_get_winrate():
    try:
        importlib.metadata.version("alpaca-eval")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # alpaca_eval 0.6.6 imports it; recent setuptools dropped it
        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse
        shim.get_distribution = lambda n: types.SimpleNamespace(version=importlib.metadata.version(n))
        sys.modules["pkg_resources"] = shim
    from alpaca_eval.metrics.winrate import get_winrate

    return get_winrate


def main() -> None:
    data = Path(os.environ.get("HARNESS_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    ap = argparse.ArgumentParser()
    ap.add_argument("--annotations", nargs="+",
                    default=[str(data / "alpaca_eval_2" / "annotations_weighted_alpaca_eval_gpt4_turbo")])
    ap.add_argument("--instruction-difficulty", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    files = find_annotation_files(args.annotations)
    frames = {m: df for f in files for m, df in read_annotations(f).items()}
    n = len(frames)
    print(f"{n} models from {len(files)} annotation files")

    p = argparse.ArgumentParser()
    AlpacaEval.add_leaderboard_args(p)
    argv = ["--annotations", *args.annotations, "--format", "csv", "--data-dir", str(data)]
    if args.instruction_difficulty:
        argv += ["--instruction-difficulty", args.instruction_difficulty]
    lb_args = p.parse_args(argv)
    t = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        AlpacaEval.leaderboard_table(lb_args)
        t.append(time.perf_counter() - t0)
    print(f"harness leaderboard end to end (JSON load included): {np.median(t) / n * 1000:.1f} ms/model "
          f"(median of {args.repeats})")

    t = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for df in frames.values():
            M.winrate_metrics(df["preference"])
        t.append(time.perf_counter() - t0)
    print(f"harness win-rate metrics only: {np.median(t) / n * 1000:.2f} ms/model")

    get_winrate = alpaca_eval_get_winrate()
    if get_winrate is None:
        print("alpaca_eval not installed: no comparison")
        return
    t = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for df in frames.values():
            get_winrate(df)
        t.append(time.perf_counter() - t0)
    print(f"alpaca_eval {importlib.metadata.version('alpaca-eval')} get_winrate: {np.median(t) / n * 1000:.2f} ms/model")


if __name__ == "__main__":
    main()
