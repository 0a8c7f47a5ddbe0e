"""Multifaceted Bench judging throughput: N instances x 4 rubrics x 3 runs through the call layer.

Against a loopback server with fixed latency (separate process); ideal = concurrency / latency.
Also times a rerun with the cache full.

    python benchmarks/multifaceted_judging.py [--instances 40] [--latency 0.2] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=40)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    from benchmarks.judge_throughput import start_server
    from harness.backends.openai_backend import OpenAIBackend
    from harness.calls import CallLayer, CallSettings
    from harness.pipeline import Run
    from harness.records import Completion
    from judges.rubric_judge import RubricJudge
    from tasks.multifaceted.release import record_to_instance

    rec = json.loads((REPO / "tasks/multifaceted/readme_example.json").read_text())
    insts = [record_to_instance(dict(rec, id=f"i{k}"), k) for k in range(a.instances)]
    judge = RubricJudge()
    calls = [call for k, inst in enumerate(insts)
             for call in judge.calls(inst, Completion("multifaceted_bench", inst.id, "m", [f"response {k}"]))]
    reqs = [Run._judge_request(c) for c in calls]
    proc, url = start_server(a.latency, answer="rubric")
    try:
        with tempfile.TemporaryDirectory() as d:
            backend = OpenAIBackend("judge", base_url=url)
            layer = CallLayer(Path(d) / "cache.sqlite", CallSettings(concurrency=a.concurrency))
            parse = lambda res, i: judge.parse_result(res, calls[i])  # noqa: E731
            t0 = time.perf_counter()
            out = asyncio.run(layer.run_parsed(backend, reqs, parse))
            first = time.perf_counter() - t0
            sent = layer.stats.sent
            assert all(p is not None and p.ok for _, p, _ in out)
            t0 = time.perf_counter()
            asyncio.run(layer.run_parsed(backend, reqs, parse))
            rerun = time.perf_counter() - t0
    finally:
        proc.terminate()
    # the judge runs of one rubric are samples of one prompt: they travel as one n>1 HTTP call
    ideal = sent * a.latency / a.concurrency
    print(f"{a.instances} instances x 4 rubrics x {judge.options['runs']} runs = {len(reqs)} judge requests "
          f"in {sent} HTTP calls (n={judge.options['runs']}), concurrency {a.concurrency}, "
          f"latency {a.latency * 1000:.0f} ms")
    print(f"  first run {first:.2f} s; ideal {ideal:.2f} s; efficiency {ideal / first:.3f} (target >= 0.85)")
    print(f"  rerun with full cache {rerun:.3f} s ({rerun / first:.3f} of the first run)")


if __name__ == "__main__":
    main()
