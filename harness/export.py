"""``harness export``: a run's judgments in the official benchmarks' own file formats.

So the harness's judgments and published ones are interchangeable: export a run, put the
files next to (or pass them together with) the published ones, and rebuild one leaderboard
with ``harness leaderboard``. Each benchmark declares its own format: a task class with an
``export_files(store, instances, completions, judgments, out)`` method is exportable
(alpaca_eval, arena_hard and mt_bench today), and this module only plans and writes.

Model and judge names become file names: each is checked (``harness.paths.check_name``) and every
path is checked to stay inside ``--out`` before the first file is written.
"""
from __future__ import annotations

from pathlib import Path

from harness.registry import TASKS
from harness.store import RunStore


def exportable() -> list[str]:
    """Tasks that declare an official file format (their extras installed)."""
    out = []
    for name in TASKS.names():
        try:
            if hasattr(TASKS.get(name), "export_files"):
                out.append(name)
        except ImportError:
            continue
    return out


def export_run(run_dir: str | Path, out: str | Path, tasks: list[str] | None = None) -> list[Path]:
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "run.sqlite").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no run.sqlite)")
    known = exportable()
    store = RunStore(run_dir)
    planned = []
    try:
        for task in tasks or known:
            if task not in known:
                raise ValueError(f"export: task '{task}' has no official file format here; known: {', '.join(known)}")
            inst, comps, judg, _ = store.current(task)  # the current records only, never stale ones
            if not judg:
                continue
            try:
                planned += TASKS.get(task).export_files(store, inst, [c for c in comps if c.status == "ok"], judg, out)
            except ValueError as e:  # a stored name that cannot be a file name: say which run holds it
                raise ValueError(f"{run_dir}: {e}") from None
    finally:
        store.close()
    # every name and path was checked while planning: a bad one stops the export before any file is written
    for path, write in planned:
        write(path)
    return [path for path, _ in planned]


def register(sub) -> None:
    p = sub.add_parser("export", help="write a run's judgments in the official file formats",
                       description=__doc__)
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tasks", nargs="*", help="subset of the exportable tasks (default: all)")

    def run(args) -> int:
        for path in export_run(args.run_dir, args.out, args.tasks):
            print(path)
        return 0

    p.set_defaults(fn=run)

