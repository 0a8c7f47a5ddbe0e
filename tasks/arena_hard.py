"""Arena-Hard-Auto v0.1: 500 questions, ``gpt-4-0314`` baseline answers, pairwise judge, BT + bootstrap.

Statistics are in ``reports/arena_hard_metrics.py``; this module reads files and wires records.

File leaderboard: ``harness leaderboard arena_hard --judgments DIR [--answers DIR] [--file-order FILE]
[--rounds N] [--clustered-rounds N] [--format csv]`` reads official ``model_judgment/<judge>/*.jsonl``
files. Files are read in sorted order by default; ``--file-order`` (e.g. the ``glob_order.txt`` of an
official run) reproduces that run's bootstrap exactly, since the official code reads files in
filesystem ``glob`` order and its CIs depend on the row order.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from harness.jsonl import read_jsonl
from harness.paths import check_name, safe_join
from harness.records import Completion, Instance, Judgment, Score
from harness.store import write_jsonl
from reports import arena_hard_metrics as AH
from tasks.base import GenerationSpec, Task
from tasks.options import CommonOptions, parse_options

BASELINE = "gpt-4-0314"
OFFICIAL_LABEL = "official-compatible (v0.1: row bootstrap, 100 rounds, RandomState(42))"


def resolve_data_dir(data_dir=None) -> Path:
    if data_dir:
        return Path(data_dir)
    from harness.data import data_dir as default

    return default()


def read_questions(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Arena-Hard questions not found")
    rows = read_jsonl(path)
    seen = set()
    for n, r in enumerate(rows, 1):
        for f in ("question_id", "turns"):
            if f not in r:
                raise ValueError(f"{path}: line {n} lacks field '{f}'")
        if r["question_id"] in seen:
            raise ValueError(f"{path}: line {n}: duplicate question_id {r['question_id']!r}")
        seen.add(r["question_id"])
    return rows


def read_answers(path: Path) -> dict[str, dict]:
    """question_id -> answer row (the official ``load_model_answers`` keeps the last of duplicates;
    here a duplicate is an error)."""
    out = {}
    for n, r in enumerate(read_jsonl(path), 1):
        if "question_id" not in r or "choices" not in r:
            raise ValueError(f"{path}: line {n} lacks field 'question_id' or 'choices'")
        if r["question_id"] in out:
            raise ValueError(f"{path}: line {n}: duplicate question_id {r['question_id']!r}")
        out[r["question_id"]] = r
    return out


def answer_text(row: dict, where: str) -> str:
    try:
        return row["choices"][0]["turns"][0]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{where}: question {row.get('question_id')!r}: field 'choices[0].turns[0].content' missing")


def avg_tokens(answers: dict[str, dict], where: str) -> int:
    """Official: int(mean of choices[0].turns[0].token_len over the model's answers)."""
    if not answers:
        return 0
    total = 0
    for qid, row in answers.items():
        try:
            total += row["choices"][0]["turns"][0]["token_len"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{where}: question {qid!r}: field 'choices[0].turns[0].token_len' missing") from None
    return int(total / len(answers))


def judgment_files(directory: Path, file_order: Path | None) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: judgments directory not found")
    present = sorted(p.name for p in directory.glob("*jsonl"))
    if not present:
        raise FileNotFoundError(f"{directory}: no *jsonl judgment files (pass model_judgment/<judge>)")
    if file_order is None:
        return [directory / n for n in present]
    names = [ln.strip() for ln in Path(file_order).read_text().splitlines() if ln.strip()]
    names = [Path(n).name for n in names]
    missing = sorted(set(names) - set(present))
    extra = sorted(set(present) - set(names))
    if missing or extra or len(names) != len(set(names)):
        raise ValueError(f"{file_order}: file order does not list exactly the files in {directory} "
                         f"(missing there: {missing[:3]}, not listed: {extra[:3]})")
    return [directory / n for n in names]


def read_judgments(files: list[Path], baseline: str) -> list[dict]:
    rows = []
    for path in files:
        file_rows = read_jsonl(path)
        for n, r in enumerate(file_rows, 1):
            for f in ("question_id", "model", "games"):
                if f not in r:
                    raise ValueError(f"{path}: line {n} lacks field '{f}'")
            if not isinstance(r["games"], list) or not r["games"]:
                raise ValueError(f"{path}: line {n} field 'games' must be a non-empty list")
            if r.get("baseline") not in (None, baseline):
                raise ValueError(f"{path}: line {n}: judged against baseline {r['baseline']!r}, "
                                 f"not {baseline!r} (use --baseline)")
            if r["model"] == baseline:
                raise ValueError(f"{path}: line {n}: the baseline {baseline!r} judged against itself")
        AH.check_unique_questions(file_rows, str(path))
        rows.extend(file_rows)
    AH.check_unique_questions(rows, "judgment files")  # the same model in two files
    return rows


def score_table(rows: list[dict], baseline: str, rounds: int, weight: int = 3, first_game_only: bool = False,
                clustered_rounds: int = 0) -> tuple[pd.DataFrame, list[str]]:
    notes = []
    battles = AH.battles_from_judgments(rows, baseline=baseline, weight=weight, first_game_only=first_game_only)
    judged = list(dict.fromkeys(r["model"] for r in rows))
    kept = set(battles["model_b"])
    for m in judged:
        if m not in kept:
            notes.append(f"model {m!r} excluded: no parsable verdict in any game")
    n_null = sum(1 for r in rows for g in r["games"][: 1 if first_game_only else 2]
                 if AH.game_outcome(0, (g or {}).get("score") if isinstance(g, dict) else None)[0] is None)
    if n_null:
        notes.append(f"{n_null} unparsable games dropped (each alone, v0.1 semantics)")
    table = AH.leaderboard(battles, baseline=baseline, num_rounds=rounds)
    if clustered_rounds:
        cl = AH.clustered_bootstrap(battles, baseline=baseline, num_rounds=clustered_rounds).set_index("model")
        table["clustered_lower"] = table["model"].map(cl["lower"])
        table["clustered_upper"] = table["model"].map(cl["upper"])
    return table, notes


def format_table(table: pd.DataFrame, fmt: str, label: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        table.to_csv(buf, index=False, lineterminator="\n")
        return buf.getvalue()
    cols = list(table.columns)
    lines = [f"CI: {label}", "", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for r in table.itertuples(index=False):
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class ArenaHardOptions(CommonOptions):
    baseline: str = BASELINE
    rounds: int = 100  # bootstrap rounds of the score CI
    clustered_rounds: int = 1000


class ArenaHard(Task):
    name = "arena_hard"
    data_sources = ("arena_hard_v0.1",)  # folders under the data dir (`harness data pull`)
    default_judge = "arena_hard_v0.1"
    primary_metric = "score"
    official_metrics = ["score", "score_lower", "score_upper"]

    def __init__(self, options: dict | None = None, data_dir=None):
        super().__init__(options, data_dir)
        self.opts = parse_options(ArenaHardOptions, self.options, self.name)  # unknown keys refused, types checked

    def folder(self) -> Path:
        return resolve_data_dir(self.data_dir) / "arena_hard_v0.1"

    @property
    def baseline(self) -> str:
        return self.options.get("baseline", BASELINE)

    def load(self) -> list[Instance]:
        folder = self.folder()
        questions = read_questions(folder / "question.jsonl")
        apath = folder / "model_answer" / f"{self.baseline}.jsonl"
        if not apath.is_file():
            raise FileNotFoundError(f"{apath}: baseline answers for {self.baseline} not found")
        answers = read_answers(apath)
        out = []
        for q in questions:
            qid = q["question_id"]
            if qid not in answers:
                raise ValueError(f"{apath}: no baseline answer for question_id {qid!r}")
            base = answer_text(answers[qid], str(apath))
            out.append(Instance(task=self.name, id=qid, turns=[t["content"] for t in q["turns"]],
                                source="arena-hard-v0.1", reference=[base], category=q.get("category", ""),
                                metadata={"cluster": q.get("cluster"), "baseline_model": self.baseline,
                                          "baseline_answer": base}))
        return out

    def generation_spec(self) -> GenerationSpec:
        # gen_answer.py default max_tokens for v0.1 is 4096 (temperature 0)
        return GenerationSpec(**{"max_tokens": 4096, **self.options.get("generation", {})})

    def judgment_rows(self, instances, judgments) -> tuple[list[dict], dict[str, int]]:
        """Judgments -> official v0.1 judgment lines (sorted by model, then instance order)."""
        order = {i.id: k for k, i in enumerate(instances)}
        games: dict[tuple[str, str], dict] = {}
        failures: dict[str, int] = {}
        for j in judgments:
            if j.criterion not in ("game1", "game2") or j.instance_id not in order:
                continue
            slot = games.setdefault((j.model, j.instance_id), {})
            ok = j.parse_status == "ok" and j.value in AH._GAME1
            slot[j.criterion] = {"score": j.value if ok else None, "judgment": j.raw}
            if not ok:
                failures[j.model] = failures.get(j.model, 0) + 1
        rows = []
        for (model, qid) in sorted(games, key=lambda k: (k[0], order[k[1]])):
            g = games[(model, qid)]
            rows.append({"question_id": qid, "model": model,
                         "games": [g.get("game1", {"score": None}), g.get("game2", {"score": None})]})
        return rows, failures

    def aggregate(self, instances: list[Instance], completions: list[Completion],
                  judgments: list[Judgment], scores: list[Score]) -> dict[str, dict]:
        rows, failures = self.judgment_rows(instances, judgments)
        if not rows:
            return {}
        rounds = int(self.options.get("rounds", 100))
        clustered = int(self.options.get("clustered_rounds", 1000))
        tokens: dict[str, list[int]] = {}
        for c in completions:
            tokens.setdefault(c.model, []).append(c.completion_tokens)
        out = {}
        if AH.battles_from_judgments(rows, baseline=self.baseline).empty:
            # no parsable verdict at all (e.g. a small local judge): nothing to score, say so
            print("note: arena_hard: no parsable verdict in any game; no scores", file=sys.stderr)
            for m in dict.fromkeys(r["model"] for r in rows):
                toks = tokens.get(m, [])
                out[m] = {"score": None, "n_parse_failures": failures.get(m, 0),
                          "avg_tokens": int(sum(toks) / len(toks)) if toks else 0}
            return out
        table, notes = score_table(rows, self.baseline, rounds, clustered_rounds=clustered)
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        for r in table.to_dict("records"):
            m = r.pop("model")
            if m == self.baseline:
                continue
            r = {"score": r["score"], "score_lower": r["lower"], "score_upper": r["upper"],
                 "ci_method": OFFICIAL_LABEL if rounds == 100 else f"v0.1 row bootstrap, {rounds} rounds",
                 **({"score_clustered_lower": r["clustered_lower"], "score_clustered_upper": r["clustered_upper"],
                     "clustered_ci_method": f"harness: question-clustered bootstrap, {clustered} rounds"}
                    if clustered else {})}
            r["n_parse_failures"] = failures.get(m, 0)
            toks = tokens.get(m, [])
            r["avg_tokens"] = int(sum(toks) / len(toks)) if toks else 0
            out[m] = r
        for m in dict.fromkeys(r["model"] for r in rows):  # judged, but no parsable verdict (noted above)
            if m not in out:
                out[m] = {"score": None, "n_parse_failures": failures.get(m, 0)}
        return out

    def per_sample(self, instances, completions, judgments, scores) -> list[dict]:
        by_inst = {i.id: i for i in instances}
        js: dict[tuple[str, str], list[Judgment]] = {}
        for j in judgments:
            js.setdefault((j.instance_id, j.model), []).append(j)
        rows = []
        for c in completions:
            inst = by_inst.get(c.instance_id)
            if inst is None:
                continue
            mine = sorted(js.get((c.instance_id, c.model), []), key=lambda j: j.criterion)
            battle = AH.battles_from_judgments(
                [{"question_id": c.instance_id, "model": c.model,
                  "games": [{"score": next((j.value for j in mine if j.criterion == g and j.parse_status == "ok"),
                                           None)} for g in ("game1", "game2")]}], baseline=self.baseline)
            score = None
            if len(battle):
                score = float(((battle["winner"] == "model_b") + 0.5 * (battle["winner"] == "tie")).mean())
            rows.append({
                "task": self.name, "instance_id": c.instance_id, "model": c.model, "score": score,
                "source": inst.source, "category": (inst.metadata or {}).get("cluster") or inst.category,
                "prompt": inst.turns[0], "response": c.text, "reference": inst.reference[0] if inst.reference else None,
                "length": len(c.text),
                "judgments": [{"criterion": j.criterion, "value": j.value, "raw": j.raw} for j in mine],
            })
        return rows

    # -- file leaderboard
    @classmethod
    def add_leaderboard_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--judgments", required=True, nargs="+",
                            help="model_judgment/<judge> directories of *.jsonl files (published and/or "
                                 "exported by `harness export`); a model may appear in one of them only")
        parser.add_argument("--answers", default=None, help="model_answer directory (adds avg_tokens)")
        parser.add_argument("--file-order", default=None,
                            help="file listing the judgment file names in the order to read them "
                                 "(e.g. an official run's glob_order.txt); default: sorted")
        parser.add_argument("--rounds", type=int, default=100, help="bootstrap rounds (official: 100)")
        parser.add_argument("--clustered-rounds", type=int, default=0,
                            help="also a question-clustered bootstrap with this many rounds (harness's own)")
        parser.add_argument("--baseline", default=BASELINE)
        parser.add_argument("--weight", type=int, default=3, help="rows per strong verdict (official: 3)")
        parser.add_argument("--first-game-only", action="store_true")
        parser.add_argument("--format", choices=["md", "csv"], default="md")

    @classmethod
    def leaderboard_table(cls, args) -> tuple[pd.DataFrame, list[str], str]:
        if args.rounds < 1:
            raise ValueError("--rounds must be at least 1")
        dirs = args.judgments if isinstance(args.judgments, list) else [args.judgments]
        if args.file_order and len(dirs) > 1:
            raise ValueError("--file-order applies to a single --judgments directory")
        files = [f for d in dirs for f in judgment_files(Path(d), Path(args.file_order) if args.file_order else None)]
        names = [Path(f).name for f in files]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"judgment file(s) {dup} appear in more than one --judgments directory")
        rows = read_judgments(files, args.baseline)
        table, notes = score_table(rows, args.baseline, args.rounds, weight=args.weight,
                                   first_game_only=args.first_game_only, clustered_rounds=args.clustered_rounds)
        default = (args.rounds == 100 and args.weight == 3 and not args.first_game_only)
        label = OFFICIAL_LABEL if default else f"v0.1 semantics with non-default settings ({args.rounds} rounds)"
        label += f"; file order: {'given' if args.file_order else 'sorted'}"
        if args.clustered_rounds:
            label += f"; clustered_lower/upper: harness's question-clustered bootstrap, {args.clustered_rounds} rounds"
        if args.answers:
            adir = Path(args.answers)
            if not adir.is_dir():
                raise FileNotFoundError(f"{adir}: answers directory not found")
            toks, absent = {}, []
            for m in table["model"]:
                p = adir / f"{m}.jsonl"
                toks[m] = avg_tokens(read_answers(p), str(p)) if p.is_file() else 0
                if not p.is_file():
                    absent.append(m)
            if absent:
                notes.append(f"{adir}: no answer file for {len(absent)} model(s) ({', '.join(absent[:3])}"
                             f"{', ...' if len(absent) > 3 else ''}); their avg_tokens is 0, as the official code")
            table["avg_tokens"] = table["model"].map(toks)
        return table, notes, label

    @classmethod
    def leaderboard(cls, args) -> str:
        table, notes, label = cls.leaderboard_table(args)
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        return format_table(table, args.format, label)

    # -- official files (harness export)
    @classmethod
    def export_files(cls, store, inst, comps, judg, out: Path) -> list[tuple[Path, Callable[[Path], None]]]:
        """The official files of this run's judgments, planned (path, writer): nothing is written here."""
        rows, _ = cls().judgment_rows(inst, judg)
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
