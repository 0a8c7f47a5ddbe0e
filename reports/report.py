"""`harness report RUN_DIR [RUN_DIR...] --out DIR`: run directories -> leaderboard, significance,
judge reliability, plots and report.html in one folder.

Everything is computed (and all inputs validated) before the first file is written, so a bad
input stops the command with one error line and leaves no half-written report.

The report is built beside the target and swapped into place in one step (``reports.publish``):
the target folder always holds either the previous complete report or the new one. An existing
target is replaced as a whole, so it must be a report folder (holding report.html) or empty.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from reports import html as html_report
from reports import bestofn, figures, leaderboard, plots, significance, stats, table_writers, tables
from reports.publish import check_target, lock_path, new_build_dir, swap_into_place, unlink_quiet, clean_leftovers

BEST_OF_N_FILES = ("best_of_n.csv", "best_of_n.jsonl", "best_of_n.json")
RUN_CRITERION = re.compile(r"^(?P<base>.+)/run(?P<run>\d+)$")


def judge_reliability(samples_by_task: dict[str, list[dict]]) -> dict:
    """Agreement between repeated judge runs (criteria named '<base>/run<k>') and the
    position-swap consistency of pairwise judges (criteria 'game1'/'game2', Arena-Hard verdicts)."""
    out = {}
    for task, rows in samples_by_task.items():
        runs = defaultdict(dict)  # (instance, model, sample, base) -> run -> value
        games = defaultdict(dict)  # (instance, model, sample) -> game -> verdict
        for r in rows:
            unit = (str(r["instance_id"]), r["model"], r.get("sample_index", 0))
            for j in r.get("judgments") or []:
                crit, val = str(j.get("criterion", "")), j.get("value")
                m = RUN_CRITERION.match(crit)
                if m and isinstance(val, (int, float)) and not isinstance(val, bool):
                    runs[unit + (m["base"],)][int(m["run"])] = float(val)
                elif crit in ("game1", "game2") and isinstance(val, str):
                    games[unit][crit] = val
        res = {}
        run_ids = sorted({k for per in runs.values() for k in per})
        if len(run_ids) >= 2:
            units = list(runs)
            matrix = np.array([[runs[u].get(k, np.nan) for u in units] for k in run_ids])
            both = np.isfinite(matrix[0]) & np.isfinite(matrix[1])
            r0, r1 = matrix[0][both], matrix[1][both]
            res["judge_runs"] = {
                "runs": run_ids, "units": len(units),
                "krippendorff_alpha_ordinal": stats.krippendorff_alpha(matrix, "ordinal"),
                "krippendorff_alpha_interval": stats.krippendorff_alpha(matrix, "interval"),
                f"weighted_kappa_run{run_ids[0]}_vs_run{run_ids[1]}":
                    stats.weighted_kappa(r0.astype(int), r1.astype(int))
                    if both.any() and np.all(r0 == np.round(r0)) and np.all(r1 == np.round(r1)) else None,
                f"raw_agreement_run{run_ids[0]}_vs_run{run_ids[1]}":
                    stats.raw_agreement(r0.tolist(), r1.tolist()) if both.any() else None,
            }
        pairs = [(g["game1"], g["game2"]) for g in games.values() if "game1" in g and "game2" in g]
        if pairs:
            res["position_swap"] = stats.position_swap_consistency([p[0] for p in pairs], [p[1] for p in pairs])
        if res:
            out[task] = res
    return out


def read_published(spec: str) -> tuple[str, dict[str, float]]:
    """'TASK=FILE' where FILE is a CSV with columns model and score, or a JSON {model: score}."""
    task, sep, file = spec.partition("=")
    if not sep or not task or not file:
        raise ValueError(f"--published expects TASK=FILE, got {spec!r}")
    path = Path(file)
    if not path.exists():
        raise ValueError(f"{path}: published leaderboard file does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return task, {str(k): float(v) for k, v in data.items()}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for f in ("model", "score"):
            if f not in (reader.fieldnames or []):
                raise ValueError(f"{path}: missing column '{f}'")
        return task, {r["model"]: float(r["score"]) for r in reader if r["score"] not in ("", None)}


def _best_of_n_rows(run_dirs, best_of_n_files) -> list[dict]:
    if isinstance(best_of_n_files, (str, Path)):
        best_of_n_files = [best_of_n_files]
    files = [Path(f) for f in best_of_n_files or []]
    for d in run_dirs:
        files += [Path(d) / f for f in BEST_OF_N_FILES if (Path(d) / f).exists()]
    rows = []
    for f in files:
        if not f.exists():
            raise ValueError(f"{f}: best-of-n file does not exist")
        rows += plots.read_best_of_n(f)
    return rows


def make_report(run_dirs, out_dir, baseline: str | None = None, pairs: str = "baseline", B: int = stats.DEFAULT_B,
                seed: int = 0, best_of_n_file=None, published: list[str] | None = None,
                max_instances: int = 200, title: str = "Evaluation report") -> Path:
    """Merge the runs and write leaderboard.*, significance.*, reliability.json, plots/*.png and
    report.html into ``out_dir``. Returns the path of report.html."""
    if not run_dirs:
        raise ValueError("no run directory given")
    if B < 100:
        raise ValueError(f"--bootstrap must be at least 100 rounds, got {B}")
    final = Path(out_dir).resolve()  # a symlinked target: the report replaces the folder it points to
    if final.parent.is_dir():
        clean_leftovers(final)
    check_target(final)
    merged = leaderboard.merge_runs(run_dirs)
    board = leaderboard.build(merged, B=B, seed=seed)
    sig = significance.compare(merged.samples, baseline=baseline, pairs=pairs, B=B, seed=seed)
    reliability = judge_reliability(merged.samples)
    extra = {"judge_reliability": reliability, "rank_correlation_with_published": {}}
    bon = _best_of_n_rows(run_dirs, best_of_n_file)
    # the paper's tables; tie+win against the significance baseline (all pairs: --baseline, else the first by name)
    tie_win_baseline = sig["settings"]["baseline"] or (
        significance.choose_baseline({t: significance.score_table(r) for t, r in merged.samples.items()}, baseline)
        if any(r.get("score") is not None for rows in merged.samples.values() for r in rows) else None)
    paper = tables.paper_tables(board, merged.samples, tie_win_baseline, B=B, seed=seed)
    correlations = {}
    for spec in published or []:
        task, pub = read_published(spec)
        ours = {r["model"]: r["cells"][task]["value"] for r in board["rows"]
                if task in r["cells"] and r["cells"][task]["value"] is not None}
        correlations[task] = stats.rank_correlation(ours, pub, seed=seed)
    extra["rank_correlation_with_published"] = correlations

    final.parent.mkdir(parents=True, exist_ok=True)
    # build in a sibling temp folder and swap it into place at the end: a failure or a kill leaves the
    # previous report (or nothing) at the target, never a half-written one
    lock_fd, tmp = new_build_dir(final)
    try:
        _write_outputs(tmp, board, sig, extra, merged, bon, title, max_instances, paper)
        check_target(final)  # a file or a foreign folder may have appeared meanwhile
        swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        unlink_quiet(lock_path(tmp))  # a trash folder left by a failed swap is the next run's to restore or remove
        os.close(lock_fd)
    return Path(out_dir) / "report.html"


def _write_outputs(out: Path, board, sig, extra, merged, bon, title, max_instances, paper=None) -> None:
    leaderboard.write(board, out)
    significance.write(sig, out)
    (out / "reliability.json").write_text(
        json.dumps(significance._json_safe(extra), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    pdir = out / "plots"
    figs: dict[str, Path] = {}
    for task in board["tasks"]:
        p = plots.score_bars(board, task, pdir / f"scores_{task}.png")
        if p:
            figs[f"{task}: scores with 95% CI"] = p
    paper = paper or {}
    table_writers.write_all(paper, out / "tables")
    if "multifaceted_by_source" in paper:
        p = figures.source_bars(paper["multifaceted_by_source"], pdir / "multifaceted_by_source.png")
        if p:
            figs["Multifaceted Bench by source (95% CI)"] = p
        p = figures.source_radar(paper["multifaceted_by_source"], pdir / "radar_sources.png")
        if p:
            figs["Multifaceted Bench by source (radar)"] = p
    if "multifaceted_by_dimension" in paper:
        p = figures.dimension_radar(paper["multifaceted_by_dimension"], pdir / "radar_dimensions.png")
        if p:
            figs["Multifaceted Bench by dimension"] = p
    p = plots.length_vs_score(merged.samples, pdir / "length_vs_score.png")
    if p:
        figs["length versus score"] = p
    p = plots.best_of_n(bon, pdir / "best_of_n.png", judged=bestofn.judged_points(board))
    if p:
        figs["best-of-n"] = p
    for task in board["tasks"]:
        p = plots.significance_matrix(sig, task, pdir / f"significance_{task}.png")
        if p:
            figs[f"{task}: significance matrix"] = p

    sections = {"Paper tables (CSV and LaTeX in tables/)": table_writers.html_section(paper)}
    if extra["judge_reliability"] or extra["rank_correlation_with_published"]:
        sections["Judge reliability and rank correlation"] = html_report.json_block(significance._json_safe(extra))
    page = html_report.render(board, sig, figs, merged.samples, title=title, extra_sections=sections,
                              max_instances=max_instances)
    (out / "report.html").write_text(page, encoding="utf-8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to merge (later ones win)")
    p.add_argument("--out", required=True, help="output folder for the report")
    p.add_argument("--baseline", default=None, help="model every other model is compared with "
                                                    "(default: first model by name)")
    p.add_argument("--all-pairs", action="store_true", help="compare all pairs of models instead of vs a baseline")
    p.add_argument("--bootstrap", type=int, default=stats.DEFAULT_B, metavar="B", help="bootstrap rounds (10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--best-of-n", action="append", default=[], metavar="FILE",
                   help="best-of-n curve (CSV/JSON/JSONL rows: n, score and/or reward, optional model and "
                        "*_lower/*_upper; or reports.bestofn's analysis JSON); repeatable; "
                        "best_of_n.{csv,jsonl,json} inside run directories are read too")
    p.add_argument("--published", action="append", default=[], metavar="TASK=FILE",
                   help="published leaderboard (CSV model,score or JSON) for Spearman/Kendall; repeatable")
    p.add_argument("--max-instances", type=int, default=200, help="instances per benchmark in the drill-down")


def run_from_args(args) -> int:
    path = make_report(args.run_dirs, args.out, baseline=args.baseline, pairs="all" if args.all_pairs else "baseline",
                       B=args.bootstrap, seed=args.seed, best_of_n_file=args.best_of_n, published=args.published,
                       max_instances=args.max_instances)
    print(path)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `report` subcommand to the harness CLI (harness.cli calls ``args.fn(args)``)."""
    p = subparsers.add_parser("report", help="leaderboard, significance, plots and report.html from run directories")
    add_arguments(p)
    p.set_defaults(fn=run_from_args)
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.report")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    raise SystemExit(main())
