"""The ``multifaceted_bench`` task: a built or released bench file, judged per rubric.

Options: ``path`` (a bench file: .jsonl/.json/.parquet, built by ``synth`` or the official
release) or ``hub`` (default ``kaist-ai/Multifaceted-Bench``, used when no path is given),
``split`` ("test"), ``n_rubrics`` (4; null to accept any count), ``limit``, ``n_boot`` (1000),
``seed`` (0), ``generation`` (overrides of JANUS's sampling parameters), ``baseline`` (a model
name: every other model also gets its pairwise win/tie/loss and tie+win rate against it, as
``vs.<baseline>.<metric>``).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
from statistics import fmean

import pandas as pd

from harness.records import Completion, Instance, Judgment, Score
from reports.multifaceted_metrics import pairwise, rows_from_judgments, rubric_means, summarize
from tasks.base import GenerationSpec, Task
from tasks.multifaceted.prompts import SAMPLING_PARAMS
from tasks.multifaceted.release import HUB_NAME, load_instances
from tasks.multifaceted.sources import SOURCES
from tasks.options import CommonOptions, parse_options


@dataclasses.dataclass
class MultifacetedOptions(CommonOptions):
    path: str | None = None  # a local bench file (JSON/JSONL)
    hub: str | None = None
    split: str = "test"
    n_rubrics: int = 4
    limit: int | None = None
    n_boot: int = 1000
    seed: int = 0
    baseline: str | None = None


class MultifacetedBench(Task):
    name = "multifaceted_bench"
    data_sources = SOURCES  # the synthesis sources (`harness data pull`)
    default_judge = "multifaceted_rubric"
    primary_metric = "score"
    # JANUS's evaluation: mean over rubrics and judge runs (given a text-grading judge)
    official_metrics = ["score"]
    build_name = "multifaceted"  # `harness bench build multifaceted --config FILE`

    def __init__(self, options: dict | None = None, data_dir=None):
        super().__init__(options, data_dir)
        self.opts = parse_options(MultifacetedOptions, self.options, self.name)  # unknown keys refused, types checked

    @classmethod
    def build(cls, config: str, out: str | None = None, limit: int | None = None):
        """Synthesize a bench from the five sources (``tasks.multifaceted.synth``); returns its path."""
        from tasks.multifaceted.synth import build_from_config

        return build_from_config(config, out, limit)

    def load(self) -> list[Instance]:
        source = self.options.get("path") or self.options.get("hub", HUB_NAME)
        instances = load_instances(source, split=self.options.get("split", "test"),
                                   n_rubrics=self.options.get("n_rubrics", 4), task=self.name)
        limit = self.options.get("limit")
        return instances[:int(limit)] if limit else instances

    def generation_spec(self) -> GenerationSpec:
        # JANUS run_inference.py samples open models with these parameters
        params = {k: SAMPLING_PARAMS[k] for k in ("max_tokens", "temperature", "top_p", "repetition_penalty")}
        return GenerationSpec(**{**params, **self.options.get("generation", {})})

    def aggregate(self, instances: list[Instance], completions: list[Completion],
                  judgments: list[Judgment], scores: list[Score]) -> dict[str, dict]:
        rows = rows_from_judgments(judgments, instances)
        n_boot, seed = int(self.options.get("n_boot", 1000)), int(self.options.get("seed", 0))
        out = summarize(rows, n_boot=n_boot, seed=seed)
        baseline = self.options.get("baseline")
        if baseline:
            if baseline not in out:
                raise ValueError(f"task {self.name}: option 'baseline': no judged model named {baseline!r} "
                                 f"(judged: {sorted(out)})")
            for model in out:
                if model != baseline:
                    res = pairwise(rows, model, baseline, n_boot=n_boot, seed=seed)
                    for k in ("n", "wins", "ties", "losses", "win_rate", "tie_rate", "loss_rate", "tie_win_rate",
                              "tie_win_rate_lower", "tie_win_rate_upper"):
                        out[model][f"vs.{baseline}.{k}"] = res[k]
        return out

    def per_sample(self, instances: list[Instance], completions: list[Completion],
                   judgments: list[Judgment], scores: list[Score]) -> list[dict]:
        by_id = {i.id: i for i in instances}
        per_rubric = rubric_means(rows_from_judgments(judgments, instances))
        js_by: dict[tuple[str, str], list[Judgment]] = {}
        for j in judgments:
            js_by.setdefault((j.instance_id, j.model), []).append(j)
        rows = []
        for c in completions:
            inst = by_id.get(c.instance_id)
            dims = {f"dim{d}": v for (m, i, d), v in sorted(per_rubric.items()) if m == c.model and i == c.instance_id}
            rows.append({
                "task": self.name, "instance_id": c.instance_id, "model": c.model,
                "score": fmean(dims.values()) if dims else None, "dims": dims,
                "source": inst.source if inst else None, "category": inst.category if inst else None,
                "system": inst.system if inst else None, "prompt": inst.turns[0] if inst else None,
                "response": c.text, "reference": inst.reference[0] if inst and inst.reference else None,
                "length": len(c.text), "sample_index": c.sample_index,
                "judgments": [{"criterion": j.criterion, "value": j.value, "parse_status": j.parse_status,
                               "raw": j.raw} for j in js_by.get((c.instance_id, c.model), [])],
            })
        return rows

    # -- file-based leaderboard: `harness leaderboard multifaceted_bench --judgments ...`
    @classmethod
    def add_leaderboard_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--judgments", nargs="+", required=True,
                            help="JANUS <model>_evaluation.json files or directories (one file per judge run; "
                                 "several files of one model are averaged as runs)")
        parser.add_argument("--baseline", default=None, help="add win/tie/loss and tie+win rate against this model")
        parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds for the CIs")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--format", choices=["md", "csv"], default="md")

    @classmethod
    def leaderboard(cls, args) -> str:
        from tasks.multifaceted.janus_eval import read_evaluations

        if args.rounds < 1:
            raise ValueError("--rounds must be at least 1")
        rows = read_evaluations(args.judgments)
        metrics = summarize(rows, n_boot=args.rounds, seed=args.seed)
        if args.baseline and args.baseline not in metrics:
            raise ValueError(f"--baseline {args.baseline!r}: no such model (found: {sorted(metrics)})")
        runs = {m: len({r.run for r in rows if r.model == m}) for m in metrics}
        table = []
        for model, m in metrics.items():
            row = {"model": model, "score": m.get("score"), "lower": m.get("score_lower"),
                   "upper": m.get("score_upper"), "n": m["n"], "runs": runs[model], "n_failed": m["n_failed"]}
            row.update({k: v for k, v in m.items() if k.startswith(("dim", "source.")) and not k.endswith(
                ("_lower", "_upper"))})
            if args.baseline and model != args.baseline:
                res = pairwise(rows, model, args.baseline, n_boot=args.rounds, seed=args.seed)
                row.update({"wins": res["wins"], "ties": res["ties"], "losses": res["losses"],
                            "tie_win_rate": res["tie_win_rate"]})
            table.append(row)
        df = pd.DataFrame(table).sort_values("score", ascending=False, kind="stable")
        for col in ("wins", "ties", "losses"):  # counts stay integers; the baseline's own row is empty
            if col in df:
                df[col] = df[col].astype("Int64")
        if args.format == "csv":
            buf = io.StringIO()
            df.to_csv(buf, index=False, lineterminator="\n")
            return buf.getvalue()
        cols = list(df.columns)
        lines = [f"Multifaceted Bench: mean rubric score (1-5), 95% percentile bootstrap over instances "
                 f"({args.rounds} rounds, seed {args.seed})", "",
                 "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
        for r in df.itertuples(index=False):
            lines.append("| " + " | ".join("" if pd.isna(v) else f"{v:.2f}" if isinstance(v, float) else str(v)
                                           for v in r) + " |")
        return "\n".join(lines) + "\n"
