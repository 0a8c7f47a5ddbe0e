"""AlpacaEval 2.0: 805 instructions, GPT-4 Turbo (``gpt4_1106_preview``) reference outputs as baseline.

Statistics are in ``reports/alpaca_eval_metrics.py``; this module reads files and wires records.

File leaderboard: ``harness leaderboard alpaca_eval --annotations DIR_OR_FILE [...]`` reads official
``annotations.json`` files and prints win_rate, standard_error, n_wins, n_wins_base, n_draws,
n_total, discrete_win_rate, avg_length, length_controlled_winrate and lc_source (how LC was computed).
LC is computed by default whenever its inputs are found; ``tasks/alpaca_eval_lc.py`` says where from and
which method applies per model. Options: ``--df-gamed PATH|pinned`` (the official v1 fit for every model),
``--instruction-difficulty PATH|pinned|reconstructed``, ``--glm-weights PATH``. ``pinned`` downloads the
file from the HF dataset ``tatsu-lab/alpaca_eval`` at a pinned revision and checks its sha256; without
options nothing is downloaded. A named file that is missing is an error naming it; LC left empty is
explained once in a note.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from harness.paths import check_name, safe_join
from harness.records import Completion, Instance, Judgment, Score
from harness.store import atomic_write_text
from reports import alpaca_eval_metrics as M
from tasks import alpaca_eval_lc as LC
from tasks.alpaca_eval_lc import read_df_gamed, read_difficulty, read_weights  # noqa: F401 (the task's API)
from tasks.base import GenerationSpec, Task
from tasks.options import CommonOptions, parse_options

BASELINE = "gpt4_1106_preview"
LEADERBOARD_COLUMNS = ["win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
                       "discrete_win_rate", "avg_length", "length_controlled_winrate", "lc_source"]
REQUIRED_FIELDS = ("instruction", "output_1", "output_2", "generator_2", "preference")
#: official whatever the LC source (the raw win rate is alpaca_eval's own computation)
RAW_OFFICIAL = ["win_rate", "standard_error", "discrete_win_rate"]


# ----------------------------------------------------------------------------- data locations
def resolve_data_dir(data_dir=None) -> Path:
    if data_dir:
        return Path(data_dir)
    from harness.data import data_dir as default

    return default()


def read_reference(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AlpacaEval reference outputs not found")
    rows = json.loads(path.read_text(encoding="utf-8"))
    for i, r in enumerate(rows):
        for f in ("instruction", "output"):
            if f not in r:
                raise ValueError(f"{path}: row {i} lacks field '{f}'")
    return rows


# ----------------------------------------------------------------------------- annotations
def find_annotation_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.rglob("annotations.json"))
            if not found:
                raise FileNotFoundError(f"{p}: no annotations.json found under this directory")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: annotations file or directory not found")
    return files


def read_annotations(path: Path) -> dict[str, pd.DataFrame]:
    """generator_2 -> its annotation rows (file order). Fails on missing fields or a bad value."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON list of annotations")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: row {i} is not an object")
        for f in REQUIRED_FIELDS:
            if f not in r:
                raise ValueError(f"{path}: row {i} lacks field '{f}'")
        v = r["preference"]
        if v is not None and not isinstance(v, (int, float)):
            raise ValueError(f"{path}: row {i} field 'preference' is not a number: {v!r}")
    df = pd.DataFrame(rows)
    df["preference"] = pd.to_numeric(df["preference"], errors="raise").astype(float)
    return {str(g): part.reset_index(drop=True) for g, part in df.groupby("generator_2", sort=False)}


def model_metrics(df: pd.DataFrame, inputs: LC.LCInputs, *, published_annotations: bool, index=None,
                  canonical: list[str] | None = None, where: str = "") -> tuple[dict, list[str]]:
    """Leaderboard row for one model's annotation rows (with ``lc_source``/``lc_reason``), and notes."""
    notes = []
    pref = df["preference"]
    bad = ~M.valid_preference_mask(pref)
    if bad.any():
        idx = list(np.flatnonzero(bad.to_numpy()))
        notes.append(f"{where}: excluded {int(bad.sum())} rows with missing or out-of-range preference "
                     f"(rows {idx[:5]}{'...' if len(idx) > 5 else ''}), as alpaca_eval does")
    row = M.winrate_metrics(pref)
    row["avg_length"] = M.avg_length(df["output_2"])
    model = str(df["generator_2"].iloc[0])
    baseline = str(df["generator_1"].iloc[0]) if "generator_1" in df else BASELINE
    lc, lc_notes = LC.compute_lc(df, inputs, model=model, baseline=baseline, win_rate=row["win_rate"],
                                 avg_len=row["avg_length"], published_annotations=published_annotations,
                                 index=index, canonical=canonical, where=where)
    row.update(lc)
    notes.extend(f"{where}: {n}" for n in lc_notes)
    if lc["lc_source"] not in (LC.SRC_NONE, LC.SRC_BASELINE) and M.is_extreme_change(
            row["win_rate"], lc["length_controlled_winrate"]):
        notes.append(f"{where}: LC {lc['length_controlled_winrate']:.1f} is very different from the raw win rate "
                     f"{row['win_rate']:.1f}")
    return row, notes


# ----------------------------------------------------------------------------- formatting
def format_table(df: pd.DataFrame, fmt: str) -> str:
    """Markdown (2 decimals) or full-precision CSV with a ``model`` column."""
    if fmt == "csv":
        buf = io.StringIO()
        df.to_csv(buf, index=True, index_label="model", lineterminator="\n")
        return buf.getvalue()
    cols = ["model", *df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for name, r in df.iterrows():
        cells = [str(name)]
        for c in df.columns:
            v = r[c]
            if isinstance(v, (float, np.floating)):
                cells.append("" if math.isnan(v) else f"{v:.2f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the task
@dataclasses.dataclass
class AlpacaEvalOptions(CommonOptions):
    instruction_difficulty: str | None = None  # LC inputs (see alpaca_eval_lc)
    df_gamed: str | None = None


class AlpacaEval(Task):
    name = "alpaca_eval"
    data_sources = ("alpaca_eval_2",)  # folders under the data dir (`harness data pull`)
    default_judge = "weighted_alpaca_eval_gpt4_turbo"
    primary_metric = "win_rate"
    # LC joins per model only when official (``LC.official_lc``): see ``aggregate``
    official_metrics = RAW_OFFICIAL

    def __init__(self, options: dict | None = None, data_dir=None):
        super().__init__(options, data_dir)
        self.opts = parse_options(AlpacaEvalOptions, self.options, self.name)  # unknown keys refused, types checked

    def folder(self) -> Path:
        return resolve_data_dir(self.data_dir) / "alpaca_eval_2"

    def reference_path(self) -> Path:
        return self.folder() / "reference_outputs" / BASELINE / "model_outputs.json"

    def load(self) -> list[Instance]:
        rows = read_reference(self.reference_path())
        return [Instance(task=self.name, id=str(i), turns=[r["instruction"]], source=r.get("dataset", ""),
                         reference=[r["output"]], category=r.get("dataset", ""),
                         metadata={"baseline_generator": r.get("generator", BASELINE), "index": i})
                for i, r in enumerate(rows)]

    def generation_spec(self) -> GenerationSpec:
        opts = {"max_tokens": 2048, **self.options.get("generation", {})}
        return GenerationSpec(**opts)

    # -- from records to annotation rows (the official format), so both paths share one computation
    def annotation_frames(self, instances, completions, judgments) -> tuple[dict[str, pd.DataFrame], dict]:
        from judges.alpaca_eval_judge import ANNOTATOR

        order = {i.id: k for k, i in enumerate(instances)}
        by_inst = {i.id: i for i in instances}
        prefs: dict[tuple[str, str], Judgment] = {}
        for j in judgments:
            if j.criterion == "preference":
                prefs[(j.instance_id, j.model)] = j
        frames: dict[str, list] = {}
        failures: dict[str, int] = {}
        for c in completions:
            if c.instance_id not in by_inst or c.sample_index != 0:
                continue
            inst = by_inst[c.instance_id]
            baseline = inst.reference[0] if inst.reference else ""
            j = prefs.get((c.instance_id, c.model))
            if baseline == c.text:
                value = 1.5  # identical outputs: a draw, never judged (alpaca_eval)
            elif j is not None and j.parse_status == "ok" and j.value is not None:
                value = float(j.value)
            else:
                value = math.nan
                failures[c.model] = failures.get(c.model, 0) + 1
            frames.setdefault(c.model, []).append({
                "k": order[c.instance_id], "instance_id": c.instance_id, "instruction": inst.turns[0],
                "output_1": baseline, "generator_1": inst.metadata.get("baseline_generator", BASELINE),
                "output_2": c.text, "generator_2": c.model, "preference": value, "annotator": ANNOTATOR})
        out = {m: pd.DataFrame(rows).sort_values("k").reset_index(drop=True) for m, rows in frames.items()}
        return out, failures

    def aggregate(self, instances: list[Instance], completions: list[Completion],
                  judgments: list[Judgment], scores: list[Score]) -> dict[str, dict]:
        """Raw win rate and LC per model. The run's outputs are never the published ones, so LC is a GLM
        fit (v1 with df_gamed.csv, else noreg), official only with the pinned file and the official judge."""
        frames, failures = self.annotation_frames(instances, completions, judgments)
        inputs = LC.load_inputs(self.folder(), difficulty=self.options.get("instruction_difficulty"),
                                df_gamed=self.options.get("df_gamed"), predict=False)
        by_inst = {i.id: i for i in instances}
        judge_models: dict[str, set[str]] = {}
        for j in judgments:
            if j.criterion == "preference":
                judge_models.setdefault(j.model, set()).add(j.judge_model)
        notes = LC.describe(inputs) if frames else []
        reasons, noreg = {}, {}
        results = {}
        for model, df in frames.items():
            index = [by_inst[i].metadata.get("index", k) for k, i in zip(df["k"], df["instance_id"])]
            row, n = model_metrics(df, inputs, published_annotations=False, index=index, where=f"model {model}")
            notes.extend(n)
            row["n_parse_failures"] = failures.get(model, 0)
            source = row["lc_source"]
            if source == LC.SRC_NONE:
                row.pop("length_controlled_winrate")
                reasons[model] = row["lc_reason"]
            else:
                row.pop("lc_reason")
            if source.startswith(LC.src_noreg("")):
                noreg[model] = LC.NOREG_NOTE
            official = LC.official_lc(source, judge_models.get(model, set()))
            row["official_metrics"] = RAW_OFFICIAL + (["length_controlled_winrate"] if official else [])
            row["leaderboard_columns"] = ["length_controlled_winrate", "lc_source"]  # the run's leaderboard.csv
            results[model] = row
        notes += LC.group_notes(noreg, "LC of") + LC.group_notes(reasons, "LC not computed for")
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        return results

    def per_sample(self, instances, completions, judgments, scores) -> list[dict]:
        frames, _ = self.annotation_frames(instances, completions, judgments)
        by_inst = {i.id: i for i in instances}
        judg = {(j.instance_id, j.model): j for j in judgments if j.criterion == "preference"}
        rows = []
        for model, df in frames.items():
            for r in df.itertuples():
                inst = by_inst[r.instance_id]
                j = judg.get((r.instance_id, model))
                pref = None if math.isnan(r.preference) else float(r.preference)
                rows.append({
                    "task": self.name, "instance_id": r.instance_id, "model": model,
                    "score": None if pref is None else pref - 1, "source": inst.source, "category": inst.category,
                    "prompt": r.instruction, "response": r.output_2, "reference": r.output_1,
                    "length": len(r.output_2),
                    "judgments": [{"criterion": "preference", "value": pref,
                                   "raw": j.raw if j else None,
                                   "feedback": (j.details or {}).get("parse") if j else "identical outputs"}],
                })
        return rows

    # -- file leaderboard
    @classmethod
    def add_leaderboard_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--annotations", nargs="+", required=True,
                            help="annotations.json files or directories (searched recursively)")
        parser.add_argument("--df-gamed", default=None,
                            help="df_gamed.csv path, or 'pinned' to download it: the official LC GLM fit for "
                                 "every model (default: used, for models without published weights, when found "
                                 "in lc_glm_weights/ or the HF cache)")
        parser.add_argument("--instruction-difficulty", default=None,
                            help="instruction_difficulty.csv path, 'pinned' (download), or 'reconstructed' "
                                 "(derived from staged files); default: the official file when found in "
                                 "lc_glm_weights/ or the HF cache, else reconstructed")
        parser.add_argument("--glm-weights", default=None,
                            help="per-model GLM weights CSV, its model names trusted (default: the staged "
                                 "lc_glm_weights file, used for annotations equal to the published leaderboard's)")
        parser.add_argument("--reference-outputs", default=None,
                            help="reference model_outputs.json giving the canonical instruction order")
        parser.add_argument("--data-dir", default=None, help="benchmark data root (default HARNESS_DATA_DIR)")
        parser.add_argument("--format", choices=["md", "csv"], default="md")

    @classmethod
    def leaderboard(cls, args) -> str:
        table, notes = cls.leaderboard_table(args)
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        return format_table(table, getattr(args, "format", "md"))

    @classmethod
    def leaderboard_table(cls, args) -> tuple[pd.DataFrame, list[str]]:
        data = resolve_data_dir(getattr(args, "data_dir", None)) / "alpaca_eval_2"
        inputs = LC.load_inputs(data, difficulty=getattr(args, "instruction_difficulty", None),
                                df_gamed=getattr(args, "df_gamed", None),
                                glm_weights=getattr(args, "glm_weights", None))
        ref_option = getattr(args, "reference_outputs", None)
        ref = Path(ref_option or data / "reference_outputs" / BASELINE / "model_outputs.json")
        canonical = [r["instruction"] for r in read_reference(ref)] if ref_option or ref.is_file() else None
        rows, notes, seen, reasons, noreg = {}, [], {}, {}, {}
        for path in find_annotation_files(list(args.annotations)):
            for model, df in read_annotations(path).items():
                if model in seen:
                    raise ValueError(f"{path}: model '{model}' already read from {seen[model]}")
                seen[model] = path
                row, n = model_metrics(df, inputs, published_annotations=True, canonical=canonical, where=str(path))
                if row["lc_source"] == LC.SRC_NONE:
                    reasons[model] = row["lc_reason"]
                elif row["lc_source"].startswith(LC.src_noreg("")):
                    noreg[model] = LC.NOREG_NOTE
                rows[model] = row
                notes.extend(n)
        table = pd.DataFrame.from_dict(rows, orient="index")[LEADERBOARD_COLUMNS]
        key = table["length_controlled_winrate"].fillna(table["win_rate"])
        table = table.loc[key.sort_values(ascending=False, kind="stable").index]
        notes += LC.describe(inputs) + LC.group_notes(noreg, "LC of") + LC.group_notes(reasons, "LC not computed for")
        return table, notes

    # -- official files (harness export)
    @classmethod
    def export_files(cls, store, inst, comps, judg, out: Path) -> list[tuple[Path, Callable[[Path], None]]]:
        """The official files of this run's judgments, planned (path, writer): nothing is written here."""
        frames, _ = cls().annotation_frames(inst, comps, judg)
        plan = []
        for model, df in frames.items():
            p = safe_join(out, "alpaca_eval", check_name(model, "alpaca_eval: model name"), "annotations.json")
            text = df.to_json(orient="records", indent=2, force_ascii=False)
            plan.append((p, lambda p, text=text: atomic_write_text(p, text)))
        return plan
