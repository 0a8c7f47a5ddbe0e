"""Shared-prefix judging on the embedded judge: one answer on 4 rubrics versus one rubric.

The Multifaceted Bench logprob judge (SmolLM2, one-token forward, top logprobs of the score
tokens) on the README example: per answer, in the same run, one rubric on today's path
(``generate``), its 4 rubrics on today's path, and its 4 rubrics on the shared-prefix path
(a fresh prefix cache each time, so nothing carries over between answers). Prints the times,
the ratios to one rubric (goal: 4 rubrics shared <= 1.5x one rubric) beside the tokens the shared path
still runs (prefix + 4 rubric suffixes, over one prompt: the floor for that ratio), and the largest score
difference between the paths (goal <= 1e-5) beside the unshared path's difference to itself run one
prompt at a time (float32 noise from other matmul shapes). ``--served`` also judges all the answers through
the local judge path (the call layer -> ``harness serve`` over hf, concurrency 16), once with
prefix sharing off, once on, and once on with two server workers (``--workers 2``: two batches at
once, one per core; the ratio printed is against one worker, the scores must be the same).

    OMP_NUM_THREADS=1 python benchmarks/prefix_judging.py [--answers 3] [--words 120] [--model default] [--served]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--answers", type=int, default=3)
    ap.add_argument("--words", type=int, default=120, help="length of each answer judged, in words")
    ap.add_argument("--served", action="store_true", help="also time the judge behind harness serve")
    a = ap.parse_args()
    from harness.backends.hf import HFBackend
    from harness.backends.prefix_cache import PrefixCache
    from harness.pipeline import Run
    from harness.records import Completion
    from judges.rubric_judge import RubricJudge
    from tasks.multifaceted.release import record_to_instance

    rec = json.loads((REPO / "tasks/multifaceted/readme_example.json").read_text())
    judge = RubricJudge({"method": "logprob"})
    plain = HFBackend(a.model, prefix_cache=0, dynamic_batching=False)
    shared = HFBackend(a.model)
    shared._model, shared._tok = plain.load()
    tok = plain.tokenizer
    rows, diff, every = [], 0.0, []
    for k in range(a.answers):
        inst = record_to_instance(dict(rec, id=f"i{k}"), k)
        text = " ".join(f"Sentence {j} of answer {k} says something relevant." for j in range(a.words // 7 + 1))
        calls = judge.calls(inst, Completion("multifaceted_bench", inst.id, "m", [text]))
        reqs = [Run._judge_request(c) for c in calls]
        every += list(zip(calls, reqs))
        if k == 0:
            plain.generate_sync(reqs[:1])  # warm-up
        t0 = time.perf_counter()
        plain.generate_sync(reqs[:1])
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = plain.generate_sync(reqs)
        four = time.perf_counter() - t0
        shared._prefixes = PrefixCache(4)
        t0 = time.perf_counter()
        got = shared.generate_sync(reqs)
        four_shared = time.perf_counter() - t0
        parsed = [judge.parse_result(x, call) for call, x in zip(calls, ref)]
        for call, px, y in zip(calls, parsed, got):
            py = judge.parse_result(y, call)
            assert px.ok == py.ok
            if px.ok:
                diff = max(diff, abs(px.value - py.value))
        if k == 0:  # the unshared path against itself, one prompt at a time: float32 noise of other shapes
            alone = [plain.generate_sync([r])[0] for r in reqs]
            noise = max(abs(px.value - judge.parse_result(y, call).value)
                        for call, px, y in zip(calls, parsed, alone) if px.ok)
        ids = [tok(plain.render(r), add_special_tokens=False)["input_ids"] for r in reqs]
        common = len(__import__("os").path.commonprefix(ids))
        rows.append((one, four, four_shared, [len(x) for x in ids], common))
    print(f"{a.model}: Multifaceted logprob judge, {a.answers} answers of ~{a.words} words x 4 rubrics")
    for one, four, sh, lens, common in rows:
        print(f"  prompt tokens {lens} (shared prefix {common}): 1 rubric {one:.2f} s, 4 rubrics {four:.2f} s "
              f"({four / one:.2f}x), 4 rubrics shared {sh:.2f} s ({sh / one:.2f}x)")
    one, four, sh = (sum(r[i] for r in rows) for i in range(3))
    # the shared path still runs every rubric's own tokens: (prefix + 4 suffixes) / one prompt bounds the
    # ratio from below whatever the kernels do (the JANUS prompt puts the rubric, ~200 tokens, last)
    floor = sum(c + sum(n - c for n in lens) for *_, lens, c in rows) / sum(lens[0] for *_, lens, _ in rows)
    print(f"total: 4 rubrics shared / 1 rubric = {sh / one:.2f}x (goal <= 1.5x; tokens run: {floor:.2f}x one "
          f"rubric's, the floor at this answer length); unshared {four / one:.2f}x; "
          f"shared is {four / sh:.2f}x faster than unshared")
    print(f"largest score difference shared vs unshared: {diff:.2e} (goal <= 1e-5); the unshared path batched "
          f"vs one prompt at a time: {noise:.2e} (its own float32 noise)")
    if a.served:
        served(plain, every, judge)


def served(plain, every, judge) -> None:
    import asyncio
    import tempfile

    from harness.backends.hf import HFBackend
    from harness.backends.openai_backend import OpenAIBackend
    from harness.calls import CallLayer, CallSettings
    from harness.serve import ServerThread, build_app

    reqs = [r for _, r in every]
    walls, values = {}, {}
    for name, size, workers in (("unshared", 0, 1), ("shared", 4, 1), ("shared, 2 workers", 4, 2)):
        backend = HFBackend(plain.model, prefix_cache=size, dynamic_batching=False, batch_size=4)
        backend._model, backend._tok = plain.load()
        with ServerThread(build_app(backend, "judge", workers=workers)) as srv, tempfile.TemporaryDirectory() as d:
            layer = CallLayer(Path(d) / "c.sqlite", CallSettings(concurrency=16))
            t0 = time.perf_counter()
            out = asyncio.run(layer.run(OpenAIBackend("judge", base_url=srv.base_url), reqs))
            walls[name] = time.perf_counter() - t0
        values[name] = [judge.parse_result(res, call).value for (call, _), res in zip(every, out)]
    diff = max((abs(x - y) for x, y in zip(values["unshared"], values["shared"]) if x is not None and y is not None),
               default=0.0)
    print(f"served (call layer -> harness serve over hf, {len(reqs)} judge requests): unshared "
          f"{walls['unshared']:.2f} s, shared {walls['shared']:.2f} s ({walls['unshared'] / walls['shared']:.2f}x "
          f"faster), largest score difference {diff:.2e}")
    two = values["shared, 2 workers"]
    same = max((abs(x - y) for x, y in zip(values["shared"], two) if x is not None and y is not None), default=0.0)
    print(f"served, shared, 2 workers: {walls['shared, 2 workers']:.2f} s ({walls['shared'] / walls['shared, 2 workers']:.2f}x "
          f"one worker), largest score difference to one worker {same:.2e}")


if __name__ == "__main__":
    main()
