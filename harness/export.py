"""``harness export``: a run's judgments in the official benchmarks' own file formats.

So the harness's judgments and published ones are interchangeable: export a run, put the
files next to (or pass them together with) the published ones, and rebuild one leaderboard
with ``harness leaderboard``:

- alpaca_eval -> ``alpaca_eval/<model>/annotations.json`` (alpaca_eval's annotations)
- arena_hard  -> ``arena_hard/model_judgment/<judge>/<model>.jsonl`` (v0.1 judgment lines)
- mt_bench    -> ``mt_bench/model_judgment/<judge>_single.jsonl`` (FastChat single-mode lines)
"""
from __future__ import annotations

from pathlib import Path

from harness.store import RunStore, atomic_write_text, write_jsonl

EXPORTABLE = ("alpaca_eval", "arena_hard", "mt_bench")


def export_run(run_dir: str | Path, out: str | Path, tasks: list[str] | None = None) -> list[Path]:
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "run.sqlite").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no run.sqlite)")
    store = RunStore(run_dir)
    written: list[Path] = []
    try:
        for task in tasks or EXPORTABLE:
            if task not in EXPORTABLE:
                raise ValueError(f"export: task '{task}' has no official file format here; "
                                 f"known: {', '.join(EXPORTABLE)}")
            inst = store.all("instance", task=task)
            judg = store.all("judgment", task=task)
            if not judg:
                continue
            written += globals()[f"_export_{task}"](store, inst, judg, out)
    finally:
        store.close()
    return written


def _export_alpaca_eval(store, inst, judg, out: Path) -> list[Path]:
    from tasks.alpaca_eval import AlpacaEval

    comps = [c for c in store.all("completion", task="alpaca_eval") if c.status == "ok"]
    frames, _ = AlpacaEval().annotation_frames(inst, comps, judg)
    paths = []
    for model, df in frames.items():
        p = out / "alpaca_eval" / model / "annotations.json"
        atomic_write_text(p, df.to_json(orient="records", indent=2, force_ascii=False))
        paths.append(p)
    return paths


def _export_arena_hard(store, inst, judg, out: Path) -> list[Path]:
    from tasks.arena_hard import ArenaHard

    rows, _ = ArenaHard().judgment_rows(inst, judg)
    judge_of = {j.model: j.judge_model for j in judg}
    by_model: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_model.setdefault((judge_of.get(r["model"], "judge"), r["model"]), []).append(r)
    paths = []
    for (judge, model), rs in by_model.items():
        p = out / "arena_hard" / "model_judgment" / judge / f"{model}.jsonl"
        write_jsonl(p, rs)
        paths.append(p)
    return paths


def _export_mt_bench(store, inst, judg, out: Path) -> list[Path]:
    by_judge: dict[str, list[dict]] = {}
    for j in judg:
        if j.judge != "mt_bench_single" or j.parse_status == "error":
            continue
        qid = int(j.instance_id) if j.instance_id.isdigit() else j.instance_id
        by_judge.setdefault(j.judge_model, []).append({
            "question_id": qid, "model": j.model,
            "judge": [j.judge_model, (j.details or {}).get("judge_prompt", "single")],
            "user_prompt": (j.prompt or [{}])[-1].get("content", ""),
            "judgment": j.raw or "", "score": j.value if j.parse_status == "ok" else -1,
            "turn": int(j.criterion[4:]), "tstamp": 0.0})
    paths = []
    for judge_model, rows in by_judge.items():
        rows.sort(key=lambda r: (r["model"], str(r["question_id"]), r["turn"]))
        p = out / "mt_bench" / "model_judgment" / f"{judge_model}_single.jsonl"
        write_jsonl(p, rows)
        paths.append(p)
    return paths


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

