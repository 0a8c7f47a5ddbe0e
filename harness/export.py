"""``harness export``: a run's judgments in the official benchmarks' own file formats.

So the harness's judgments and published ones are interchangeable: export a run, put the
files next to (or pass them together with) the published ones, and rebuild one leaderboard
with ``harness leaderboard``:

- alpaca_eval -> ``alpaca_eval/<model>/annotations.json`` (alpaca_eval's annotations)
- arena_hard  -> ``arena_hard/model_judgment/<judge>/<model>.jsonl`` (v0.1 judgment lines)
- mt_bench    -> ``mt_bench/model_judgment/<judge>_single.jsonl`` (FastChat single-mode lines)

Model and judge names become file names: each is checked (``harness.paths.check_name``) and every
path is checked to stay inside ``--out`` before the first file is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from harness.paths import check_name, safe_join
from harness.store import RunStore, atomic_write_text, write_jsonl

EXPORTABLE = ("alpaca_eval", "arena_hard", "mt_bench")


def export_run(run_dir: str | Path, out: str | Path, tasks: list[str] | None = None) -> list[Path]:
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "run.sqlite").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no run.sqlite)")
    store = RunStore(run_dir)
    planned: list[tuple[Path, Callable[[Path], None]]] = []
    try:
        for task in tasks or EXPORTABLE:
            if task not in EXPORTABLE:
                raise ValueError(f"export: task '{task}' has no official file format here; "
                                 f"known: {', '.join(EXPORTABLE)}")
            inst, comps, judg, _ = store.current(task)  # the current records only, never stale ones
            if not judg:
                continue
            try:
                planned += globals()[f"_export_{task}"](store, inst, [c for c in comps if c.status == "ok"], judg, out)
            except ValueError as e:  # a stored name that cannot be a file name: say which run holds it
                raise ValueError(f"{run_dir}: {e}") from None
    finally:
        store.close()
    # every name and path was checked while planning: a bad one stops the export before any file is written
    for path, write in planned:
        write(path)
    return [path for path, _ in planned]


def _export_alpaca_eval(store, inst, comps, judg, out: Path) -> list[tuple[Path, Callable[[Path], None]]]:
    from tasks.alpaca_eval import AlpacaEval

    frames, _ = AlpacaEval().annotation_frames(inst, comps, judg)
    plan = []
    for model, df in frames.items():
        p = safe_join(out, "alpaca_eval", check_name(model, "alpaca_eval: model name"), "annotations.json")
        text = df.to_json(orient="records", indent=2, force_ascii=False)
        plan.append((p, lambda p, text=text: atomic_write_text(p, text)))
    return plan


def _export_arena_hard(store, inst, comps, judg, out: Path) -> list[tuple[Path, Callable[[Path], None]]]:
    from tasks.arena_hard import ArenaHard

    rows, _ = ArenaHard().judgment_rows(inst, judg)
    judge_of = {j.model: j.judge_model for j in judg}
    by_model: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_model.setdefault((judge_of.get(r["model"], "judge"), r["model"]), []).append(r)
    plan = []
    for (judge, model), rs in by_model.items():
        p = safe_join(out, "arena_hard", "model_judgment", check_name(judge, "arena_hard: judge name"),
                      check_name(model, "arena_hard: model name") + ".jsonl")
        plan.append((p, lambda p, rs=rs: write_jsonl(p, rs)))
    return plan


def _export_mt_bench(store, inst, comps, judg, out: Path) -> list[tuple[Path, Callable[[Path], None]]]:
    by_judge: dict[str, list[dict]] = {}
    for j in judg:
        if j.parse_status == "error":
            continue
        qid = int(j.instance_id) if j.instance_id.isdigit() else j.instance_id
        by_judge.setdefault(j.judge_model, []).append({
            "question_id": qid, "model": j.model,
            "judge": [j.judge_model, (j.details or {}).get("judge_prompt", "single")],
            "user_prompt": (store.judge_prompt(j) or [{}])[-1].get("content", ""),
            "judgment": j.raw or "", "score": j.value if j.parse_status == "ok" else -1,
            "turn": int(j.criterion[4:]), "tstamp": 0.0})
    plan = []
    for judge_model, rows in by_judge.items():
        rows.sort(key=lambda r: (r["model"], str(r["question_id"]), r["turn"]))
        p = safe_join(out, "mt_bench", "model_judgment", check_name(judge_model, "mt_bench: judge name") + "_single.jsonl")
        plan.append((p, lambda p, rows=rows: write_jsonl(p, rows)))
    return plan


def register(sub) -> None:
    p = sub.add_parser("export", help="write a run's judgments in the official file formats",
                       description=__doc__)
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tasks", nargs="*", help=f"subset of {', '.join(EXPORTABLE)}")

    def run(args) -> int:
        for path in export_run(args.run_dir, args.out, args.tasks):
            print(path)
        return 0

    p.set_defaults(fn=run)

