"""Constrained (JSON schema) vs unconstrained generation on the hf backend.

The same prompts and token budget both ways: the preference-set prompt and the rubric prompt of
the Multifaceted Bench builder over N MT-Bench first turns, greedy, on the embedded SmolLM2 (or
``--model``). Prints, per mode: outputs that parse and validate against the stage's schema,
generated tokens, tokens/s, and the constrained/unconstrained throughput ratio (goal >= 0.8);
plus the time to compile the two schemas.

The raw ratio compares different work: constrained answers close their JSON and stop (about half
the tokens of the free ones, which run to the budget), so the batch's prefill and its low-occupancy
tail weigh twice as much per token. ``same_tokens_ratio`` isolates the constraint itself: the time
the decoder spent in the grammar (``RowGrammars.mask`` and ``accept``, timed in this process)
against the constrained run's wall, i.e. its throughput relative to decoding the same tokens
without a grammar (the decode loop is otherwise the same).

Usage: python benchmarks/constrained_generation.py [--model DIR] [--n 10] [--max-tokens 512] [--batch-size 8]
       [--max-field-chars 300] [--build-config configs/multifaceted_build_demo.yaml --build-limit 5]

With ``--build-config`` it then runs that bench build (into a temporary directory, ``--build-limit``
instructions) and prints its valid instances per minute and valid share from ``build_report.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backends.base import GenRequest  # noqa: E402
from harness.backends.hf import HFBackend  # noqa: E402
from harness.backends.structured import RowGrammars, schema_violation  # noqa: E402
from harness.data import data_dir  # noqa: E402
from tasks.multifaceted import prompts as P  # noqa: E402
from tasks.multifaceted import synth  # noqa: E402
from tasks.multifaceted.schema import preference_set_generation_schema, rubric_generation_schema  # noqa: E402
from tasks.multifaceted.sources import load_source  # noqa: E402

MAX_CHARS = [300]  # build.max_field_chars of the schemas
PREF = {"dimension": "style", "subdimension": "conciseness", "preference": "short, direct answers",
        "description": "The user wants the answer in a few sentences, without digressions."}


def jobs(n: int) -> list[tuple[str, list[dict], dict]]:
    pref_schema = preference_set_generation_schema(P.DIMENSIONS, MAX_CHARS[0])
    rubric_schema = rubric_generation_schema(MAX_CHARS[0])
    prompts = [i.turns[0] for i in load_source("mt_bench", data_dir())[:n]]
    out = [("preference_set", synth.preference_messages(p), pref_schema) for p in prompts]
    for p in prompts:  # one rubric per prompt: the preference names the prompt's topic
        pref = {**PREF, "description": PREF["description"] + f" Topic: {p[:80]}"}
        out.append(("rubric", synth.rubric_messages(pref), rubric_schema))
    return out


GRAMMAR_S = [0.0]  # seconds inside RowGrammars.mask / accept


def _timed(fn):
    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            GRAMMAR_S[0] += time.perf_counter() - t0
    return wrapper


def run(backend: HFBackend, items, max_tokens: int, constrained: bool) -> dict:
    reqs = [GenRequest(messages=m, max_tokens=max_tokens, temperature=0.0, json_schema=s if constrained else None)
            for _, m, s in items]
    GRAMMAR_S[0] = 0.0
    t0 = time.perf_counter()
    results = []
    for b in range(0, len(reqs), backend.max_batch):
        results += backend.generate_sync(reqs[b:b + backend.max_batch])
    wall = time.perf_counter() - t0
    valid = sum(schema_violation(r.text, s) is None for r, (_, _, s) in zip(results, items))
    tokens = sum(r.completion_tokens for r in results)
    return {"valid": valid, "of": len(items), "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "grammar_s": round(GRAMMAR_S[0], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=10, help="MT-Bench prompts per schema")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-field-chars", type=int, default=300, help="as build.max_field_chars")
    ap.add_argument("--build-config", help="also time this bench build config")
    ap.add_argument("--build-limit", type=int, default=5)
    ap.add_argument("--skip-tokens", action="store_true", help="only the bench build")
    args = ap.parse_args()
    if not args.skip_tokens:
        token_throughput(args)
    if args.build_config:
        bench_build(args.build_config, args.build_limit)
    return 0


def bench_build(config: str, limit: int) -> None:
    import tempfile

    from tasks.multifaceted.build import build_from_config

    with tempfile.TemporaryDirectory() as tmp:
        out = build_from_config(config, tmp, limit=limit)
        report = json.loads((Path(out).parent / "build_report.json").read_text())
    keys = ("instances", "valid", "valid_share", "wall_s", "valid_instances_per_minute", "generated_tokens",
            "valid_token_share")
    print(json.dumps({"bench_build": config, **{k: report[k] for k in keys}}, indent=2))


def token_throughput(args) -> None:
    MAX_CHARS[0] = args.max_field_chars
    # timed here, not at import: only this measurement wraps the decoder's grammar calls
    RowGrammars.mask, RowGrammars.accept = _timed(RowGrammars.mask), _timed(RowGrammars.accept)
    backend = HFBackend(args.model, batch_size=args.batch_size)
    backend.load()
    items = jobs(args.n)
    t0 = time.perf_counter()
    for s in {json.dumps(s, sort_keys=True): s for _, _, s in items}.values():
        backend.check_json_schema(s)
    compile_s = time.perf_counter() - t0
    from importlib.metadata import version

    free = run(backend, items, args.max_tokens, constrained=False)
    cons = run(backend, items, args.max_tokens, constrained=True)
    # None: the grammar ran in generate()'s logits processor (not the dynamic-batch decoder), untimed
    same_tokens = round(1 - cons["grammar_s"] / cons["wall_s"], 3) if cons["grammar_s"] else None
    print(json.dumps({"model": backend.model_id, "xgrammar": version("xgrammar"), "prompts": len(items),
                      "max_tokens": args.max_tokens, "batch_size": args.batch_size,
                      "schema_compile_s": round(compile_s, 2), "unconstrained": free, "constrained": cons,
                      "throughput_ratio": round(cons["tokens_per_s"] / free["tokens_per_s"], 3),
                      "same_tokens_ratio": same_tokens}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
