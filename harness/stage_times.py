"""Where a run's time went: one row per stage (build, generate per task x model, score, judge
per task, aggregate) with wall time, calls, cache hits, tokens and, for local engines, tokens/s.

``Run.summary["stages"]`` holds the rows (so ``results.json`` has them under
``summary.stages``); ``harness run`` prints them with :func:`format_table`.
"""
from __future__ import annotations

import contextlib
import time

FIELDS = ("stage", "task", "model", "wall_s", "requests", "cached", "sent", "failed",
          "prompt_tokens", "completion_tokens", "local", "tokens_per_s", "prompt_tokens_per_s")


def is_local(backend, mcfg=None) -> bool:
    """A model this machine computes: an in-process engine, or a `harness serve` the run started."""
    return bool(getattr(backend, "local", False) or (mcfg is not None and getattr(mcfg, "serve", None)))


@contextlib.contextmanager
def stage(rows: list, name: str, task: str | None = None, model: str | None = None, local=False):
    """Times the block and appends its row; the call counts are those of the calls made inside it
    (``harness.calls.counting``), so stages that overlap in time each count their own.

    ``local`` may be a callable, read when the block ends (the backend exists only then)."""
    from harness.calls import counting

    t0 = time.perf_counter()
    with counting() as stats:
        try:
            yield
        finally:
            wall = time.perf_counter() - t0
            now = stats.to_dict()
            d = {k: now[k] for k in ("requests", "cached", "sent", "failed", "prompt_tokens", "completion_tokens")}
        loc = bool(local() if callable(local) else local)
        row = {"stage": name, "task": task, "model": model, "wall_s": round(wall, 6), **d, "local": loc,
               # tokens computed here per second of the stage's wall time; cache hits compute nothing
               "tokens_per_s": round(d["completion_tokens"] / wall, 1) if loc and wall > 0 else None,
               "prompt_tokens_per_s": round(d["prompt_tokens"] / wall, 1) if loc and wall > 0 else None}
        rows.append(row)


def format_table(rows: list[dict], elapsed_s: float | None = None) -> str:
    """The stage rows as a fixed-width table; tokens/s only for local engines ("-" otherwise).
    ``elapsed_s``: the run's wall time, less than the stages' sum when judging overlapped generation."""
    def rate(x):
        return f"{x:.1f}" if x is not None else "-"

    lines = [f"{'stage':10s} {'task':24s} {'model':22s} {'wall s':>8s} {'calls':>7s} {'cached':>7s} "
             f"{'prompt tok':>10s} {'compl tok':>9s} {'prompt tok/s':>12s} {'compl tok/s':>11s}"]
    for r in rows:
        lines.append(f"{r['stage']:10s} {(r.get('task') or '-')[:24]:24s} {(r.get('model') or '-')[:22]:22s} "
                     f"{r['wall_s']:8.2f} {r['requests']:7d} {r['cached']:7d} {r['prompt_tokens']:10d} "
                     f"{r['completion_tokens']:9d} {rate(r.get('prompt_tokens_per_s')):>12s} "
                     f"{rate(r.get('tokens_per_s')):>11s}")
    lines.append(f"{'total':10s} {'':24s} {'':22s} {sum(r['wall_s'] for r in rows):8.2f}")
    if elapsed_s is not None:
        lines.append(f"{'elapsed':10s} {'(score and judge steps overlap generation)':47s} {elapsed_s:8.2f}")
    return "\n".join(lines)
