"""MT-Bench (FastChat ``llm_judge``): 80 two-turn questions, single-answer grading.

Aggregation is FastChat's ``show_result.py --mode single``: rows with score -1 are
dropped; turn 1 and turn 2 are averaged per model; "average" pools all remaining
rows of both turns (it is not the mean of the two turn means when rows were dropped).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from harness.data import require
from harness.jsonl import read_jsonl
from harness.paths import check_name, safe_join
from harness.records import Instance
from harness.store import write_jsonl
from judges.mt_bench_judge import NEED_REF_CATS
from tasks.base import GenerationSpec, Task
from tasks.options import CommonOptions, parse_options

# FastChat gen_model_answer.py temperature per category
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}


def fastchat_single_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three tables of ``show_result.py --mode single`` (turn 1, turn 2, average)."""
    df = df[["model", "score", "turn"]]
    df = df[df["score"] != -1]
    t1 = df[df["turn"] == 1].groupby(["model", "turn"]).mean().sort_values(by="score", ascending=False)
    t2 = df[df["turn"] == 2].groupby(["model", "turn"]).mean().sort_values(by="score", ascending=False)
    avg = df[["model", "score"]].groupby(["model"]).mean().sort_values(by="score", ascending=False)
    return t1, t2, avg


def summarize_single(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: turn1, turn2, average (pooled), n per turn, failures."""
    t1, t2, avg = fastchat_single_tables(df)
    out = pd.DataFrame({"turn1": t1["score"].droplevel("turn"), "turn2": t2["score"].droplevel("turn"),
                        "average": avg["score"]})
    ok = df[df["score"] != -1]
    out["n_turn1"] = ok[ok["turn"] == 1].groupby("model").size()
    out["n_turn2"] = ok[ok["turn"] == 2].groupby("model").size()
    out["n_failed"] = df[df["score"] == -1].groupby("model").size()
    out = out.fillna({"n_turn1": 0, "n_turn2": 0, "n_failed": 0}).astype(
        {"n_turn1": int, "n_turn2": int, "n_failed": int})
    return out.sort_values("average", ascending=False)


@dataclasses.dataclass
class MTBenchOptions(CommonOptions):
    path: str | None = None  # the MT-Bench folder (default <data>/mt_bench)
    questions: str | None = None
    reference_answers: str | None = None
    judge_prompts: str | None = None
    category_temperature: bool = True  # FastChat's per-category temperatures


class MTBench(Task):
    name = "mt_bench"
    data_sources = ("mt_bench",)  # folders under the data dir (`harness data pull`)
    default_judge = "mt_bench_single"
    primary_metric = "score"
    # FastChat show_result numbers; the CI is the harness's own
    official_metrics = ["score", "turn1", "turn2"]

    def __init__(self, options: dict | None = None, data_dir=None):
        super().__init__(options, data_dir)
        self.opts = parse_options(MTBenchOptions, self.options, self.name)  # unknown keys refused, types checked

    def _dir(self) -> Path:
        return Path(self.options.get("path") or Path(self.data_dir) / "mt_bench")

    def load(self) -> list[Instance]:
        d = self._dir()
        qfile = require(Path(self.options.get("questions") or d / "question.jsonl"), "MT-Bench question file")
        rfile = Path(self.options.get("reference_answers") or d / "reference_answer" / "gpt-4.jsonl")
        prompts = str(require(Path(self.options.get("judge_prompts") or d / "judge_prompts.jsonl"),
                              "MT-Bench judge prompts"))
        refs = {}
        if rfile.exists():
            for r in read_jsonl(rfile, ("question_id", "choices")):
                refs[r["question_id"]] = r["choices"][0]["turns"]
        out = []
        for q in read_jsonl(qfile, ("question_id", "category", "turns")):
            cat = q["category"]
            ref = refs.get(q["question_id"]) if cat in NEED_REF_CATS else None
            if cat in NEED_REF_CATS and ref is None:
                raise ValueError(f"{rfile}: no reference answer for question {q['question_id']} ({cat})")
            out.append(Instance(task=self.name, id=str(q["question_id"]), turns=list(q["turns"]), source="mt_bench",
                                category=cat, reference=ref, metadata={"judge_prompts": prompts}))
        return out

    def generation_spec(self) -> GenerationSpec:
        spec = {"max_tokens": 1024, **self.options.get("generation", {})}
        return GenerationSpec(**spec)

    def sampling_for(self, inst: Instance) -> dict:
        if self.options.get("category_temperature", True):
            return {"temperature": CATEGORY_TEMPERATURE.get(inst.category, 0.7)}
        return {}

    def _frame(self, judgments) -> pd.DataFrame:
        rows = [{"model": j.model, "question_id": j.instance_id, "turn": int(j.criterion[4:]),
                 "score": j.value if j.parse_status == "ok" else -1}
                for j in judgments if j.parse_status != "error"]
        return pd.DataFrame(rows, columns=["model", "question_id", "turn", "score"])

    def aggregate(self, instances, completions, judgments, scores) -> dict[str, dict]:
        df = self._frame(judgments)
        if df.empty:
            return {}
        out = {}
        summary = summarize_single(df)
        for model, row in summary.iterrows():
            ok = df[(df["model"] == model) & (df["score"] != -1)].groupby("question_id")["score"].mean()
            lo, hi = _bootstrap_ci(ok.to_numpy(float))
            out[model] = {"score": row["average"], "score_lower": lo, "score_upper": hi,
                          "score_ci_method": "harness: percentile bootstrap over questions (FastChat prints no CI)",
                          "turn1": row["turn1"], "turn2": row["turn2"], "n": int(len(ok)),
                          "n_turn1": row["n_turn1"], "n_turn2": row["n_turn2"], "n_failed": row["n_failed"],
                          "scale": "1-10"}
        return out

    def per_sample(self, instances, completions, judgments, scores) -> list[dict]:
        by_inst = {i.id: i for i in instances}
        js: dict[tuple, list] = {}
        for j in judgments:
            js.setdefault((j.instance_id, j.model), []).append(j)
        rows = []
        for c in completions:
            inst = by_inst.get(c.instance_id)
            mine = sorted(js.get((c.instance_id, c.model), []), key=lambda j: j.criterion)
            vals = [j.value for j in mine if j.parse_status == "ok"]
            rows.append({"task": self.name, "instance_id": c.instance_id, "model": c.model,
                         "score": float(np.mean(vals)) if vals else None,
                         "category": inst.category if inst else "", "source": "mt_bench",
                         "system": inst.system if inst else None, "prompt": inst.turns if inst else None,
                         "response": c.texts, "reference": inst.reference if inst else None,
                         "length": sum(len(t) for t in c.texts),
                         "dims": {j.criterion: j.value for j in mine if j.parse_status == "ok"},
                         "judgments": [{"criterion": j.criterion, "value": j.value, "parse_status": j.parse_status,
                                        "method": j.method, "feedback": j.raw} for j in mine]})
        return rows

    # -- file leaderboard: FastChat judgment files
    @classmethod
    def add_leaderboard_args(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--judgments", required=True, help="FastChat single-mode judgment file (gpt-4_single.jsonl)")
        p.add_argument("--format", choices=["fastchat", "md", "csv"], default="fastchat",
                       help="fastchat: the three tables as show_result.py prints them; csv: model,turn1,turn2,average")
        p.add_argument("--model-list", nargs="*", default=None, help="only these models")

    @classmethod
    def leaderboard(cls, args) -> str:
        path = Path(args.judgments)
        require(path, "judgment file")
        rows = read_jsonl(path, ("model", "score", "turn"))
        for n, r in enumerate(rows, 1):
            for field, kinds in (("score", (int, float)), ("turn", (int,))):
                if not isinstance(r[field], kinds) or isinstance(r[field], bool):
                    raise ValueError(f"{path}: record {n}: field '{field}' must be a number, got {r[field]!r}")
        df = pd.DataFrame(rows)
        if args.model_list:
            df = df[df["model"].isin(args.model_list)]
        if args.format == "fastchat":
            t1, t2, avg = fastchat_single_tables(df)
            buf = io.StringIO()
            print("Mode: single", file=buf)
            print(f"Input file: {args.judgments}", file=buf)
            print("\n########## First turn ##########", file=buf)
            print(t1, file=buf)
            print("\n########## Second turn ##########", file=buf)
            print(t2, file=buf)
            print("\n########## Average ##########", file=buf)
            print(avg, file=buf)
            return buf.getvalue()
        summary = summarize_single(df)
        if args.format == "csv":
            out = summary[["turn1", "turn2", "average"]].reset_index().rename(columns={"index": "model"})
            return out.to_csv(index=False, float_format="%.17g")
        table = summary.reset_index().rename(columns={"index": "model"})
        from harness.run_leaderboard import markdown_table

        return markdown_table(table)

    # -- official files (harness export)
    @classmethod
    def export_files(cls, store, inst, comps, judg, out: Path) -> list[tuple[Path, Callable[[Path], None]]]:
        """The official files of this run's judgments, planned (path, writer): nothing is written here."""
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
            name = check_name(judge_model, "mt_bench: judge name") + "_single.jsonl"
            p = safe_join(out, "mt_bench", "model_judgment", name)
            plan.append((p, lambda p, rows=rows: write_jsonl(p, rows)))
        return plan


def _bootstrap_ci(x: np.ndarray, b: int = 2000, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile CI of the mean over questions (the harness's own; FastChat reports none)."""
    if len(x) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(b, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
