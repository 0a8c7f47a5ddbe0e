"""``harness rerank``: the command line of best-of-n reranking (``harness.rerank.job``)."""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from harness.rerank.job import check_label, rerank, select_task
from harness.rerank.pool import RerankError
from harness.store import RunStore


def parse_ns(text: str) -> list[int]:
    try:
        ns = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise RerankError(f"--n: expected comma-separated integers like 1,2,4,8,16, got '{text}'") from None
    if not ns or ns[0] < 1:
        raise RerankError(f"--n: every n must be >= 1, got '{text}'")
    return ns


def rerank_scorer(spec: str, run_dir: Path | None = None, task: str | None = None, calls=None,
                  max_tokens: int | None = None, flag: str = "--reward-model", **rm_options):
    """The scorer a ``--reward-model``/``--oracle`` value names: ``judge[:KIND]`` (the run config's judge),
    ``toxicity[:CLASSIFIER]`` (a penalty), or a reward model (a directory or a hub id)."""
    from harness.scorers import make_scorer

    kind = spec.partition(":")[0]
    try:
        if kind == "judge":
            if task is None and run_dir is not None and (run_dir / "run.sqlite").exists():
                store = RunStore(run_dir)
                try:
                    task = select_task(store, None, str(run_dir))
                finally:
                    store.close()
            return make_scorer(spec, run_dir=run_dir, task=task, calls=calls)
        if kind == "toxicity":
            return make_scorer(spec)
        return make_scorer(spec, max_tokens=max_tokens, **rm_options)
    except RerankError:
        raise
    except ValueError as e:
        raise RerankError(f"{flag}: {e}") from None


def run_call_settings(run_dir: Path):
    """The call settings of the run whose directory receives the models (its ``config.yaml``'s ``calls:``:
    concurrency, rate and cost limits, retries, prices), so the pool is sampled as the run's own steps are;
    defaults for a directory without a config."""
    from harness.calls import CallSettings
    from harness.config import load_config

    path = run_dir / "config.yaml"
    if not path.exists():
        return CallSettings()
    return CallSettings.from_dict(load_config(path).calls, f"{path}: calls")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "rerank", help="best-of-n reranking / rescoring of a candidate pool with a reward model",
        description="Sample n candidates per instance if needed, score them with a reward model (or a judge, or "
                    "a toxicity penalty), and write <model>@bo<n>[<scorer>] models into the run. Scores are "
                    "stored per candidate: rescoring with the same scorer is free, a killed job resumes.")
    p.add_argument("--candidates", required=True, help="run directory, or a JSONL/JSON file of candidates")
    p.add_argument("--reward-model", required=True,
                   help="reward model directory or hub id (TRL RM, JANUS-RM value-head, any sequence classifier), "
                        "'judge[:NAME]' (the run config's judge) or 'toxicity[:SCORER]' (penalty)")
    p.add_argument("--n", default="1,2,4,8,16", help="comma-separated n values (default 1,2,4,8,16)")
    p.add_argument("--task", help="task (default: the only task in the run)")
    p.add_argument("--model", help="model whose candidates are reranked (default for files: the file name)")
    p.add_argument("--out", help="run directory that receives the @bo<n> models (default: --candidates)")
    p.add_argument("--label", help="name inside [...] of the virtual models (default: the scorer's name)")
    p.add_argument("--oracle", help="scorer for the analysis's oracle score per candidate (e.g. 'judge')")
    p.add_argument("--scorer-batch-tokens", type=int, help="padded tokens per reward-model batch (default 16384)")
    p.add_argument("--prompt-format", help="reward model text format: janus-mistral or tokenizer")
    p.add_argument("--reward-engine", choices=("hf", "vllm"), default="hf",
                   help="what runs the reward model: transformers (hf, default) or vLLM's pooling runner (vllm)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--no-analysis", action="store_true", help="skip the best-of-n analysis files")
    p.set_defaults(fn=cmd_rerank)
    return p


def cmd_rerank(args) -> int:
    from harness.calls import CallLayer

    ns = parse_ns(args.n)
    if args.label is not None:
        check_label(args.label)
    cand = Path(args.candidates)
    run_dir = Path(args.out) if args.out else cand
    sampling = {k: v for k, v in {"temperature": args.temperature, "top_p": args.top_p,
                                  "repetition_penalty": args.repetition_penalty,
                                  "max_tokens": args.max_tokens}.items() if v is not None}
    if not cand.exists():
        raise RerankError(f"--candidates: {cand} does not exist")
    if cand.is_dir() and not (cand / "run.sqlite").exists():
        raise RerankError(f"--candidates: {cand} is not a run directory (no run.sqlite)")
    if cand.is_file() and not args.out:
        raise RerankError("--out: a run directory is needed when --candidates is a file")
    calls = CallLayer(run_dir / "cache.sqlite", run_call_settings(run_dir))
    scorer = oracle = None
    try:
        rm_opts = {"device": args.device, "dtype": args.dtype}
        if args.reward_engine != "hf":
            rm_opts["engine"] = args.reward_engine
        if args.prompt_format:
            rm_opts["prompt_format"] = args.prompt_format
        scorer = rerank_scorer(args.reward_model, run_dir, args.task, calls, args.scorer_batch_tokens, **rm_opts)
        oracle = rerank_scorer(args.oracle, run_dir, args.task, calls, args.scorer_batch_tokens, "--oracle",
                               **rm_opts) if args.oracle else None
        res = asyncio.run(rerank(cand, scorer, ns, task=args.task, model=args.model, out=args.out,
                                 sampling=sampling, label=args.label, oracle=oracle,
                                 analysis=not args.no_analysis, calls=calls))
    finally:
        for s in (scorer, oracle):
            if hasattr(s, "close"):
                s.close()  # a judge scorer may have started a local server
        calls.close()
    print(f"pool: {res.pool_model} on {res.task}: {res.n_candidates} candidates, {res.scored_now} scored now, "
          f"{res.n_candidates - res.scored_now} from stored scores")
    for name, count in res.virtual_models.items():
        gap = res.left_out.get(name)
        n = name.rsplit("@bo", 1)[1].split("[", 1)[0]
        why = f" ({gap} instance{'s' if gap > 1 else ''} without {n} scored samples left out)" if gap else ""
        print(f"  {name}: {count} completions{why}")
    for f in res.analysis_files:
        print(f"  analysis: {f}")
    print(f"judge them with `harness judge <config> --out {run_dir}`; they appear in its leaderboard")
    return 0
