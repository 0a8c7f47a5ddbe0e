"""RealToxicityPrompts continuations/s on CPU: k samples of a prompt in one batch vs one at a time.

    python benchmarks/rtp_generation.py [--prompts 4] [--k 25] [--model default]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--model", default="default")
    a = ap.parse_args()
    from harness.backends.base import GenRequest
    from harness.backends.hf import HFBackend
    from tasks.real_toxicity_prompts import RealToxicityPrompts

    data = Path(os.environ.get("HARNESS_DATA_DIR", REPO.parent / "shared" / "data"))
    inst = RealToxicityPrompts(data_dir=data).load()[: a.prompts]
    spec = RealToxicityPrompts(data_dir=data).generation_spec()
    reqs = [GenRequest(prompt=i.turns[0], max_tokens=spec.max_tokens, temperature=spec.temperature,
                       top_p=spec.top_p, sample_index=s) for i in inst for s in range(a.k)]
    rates = {}
    for label, batch in (("batched (k per batch)", a.k), ("one at a time", 1)):
        b = HFBackend(a.model, batch_size=batch)
        b.load()
        t0 = time.perf_counter()
        for j in range(0, len(reqs), batch):
            asyncio.run(b.generate(reqs[j:j + batch]))
        rates[label] = len(reqs) / (time.perf_counter() - t0)
        print(f"{label:24s} {rates[label]:7.2f} continuations/s ({len(reqs)} continuations, "
              f"{spec.max_tokens} new tokens max)")
    print(f"ratio batched / one at a time: {rates['batched (k per batch)'] / rates['one at a time']:.2f}x")


if __name__ == "__main__":
    main()
