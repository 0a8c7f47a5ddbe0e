"""AlpacaEval 2.0: 805 instructions, GPT-4 Turbo (``gpt4_1106_preview``) reference outputs as baseline.

Statistics are in ``reports/alpaca_eval_metrics.py``; this module reads files and wires records.

File leaderboard: ``harness leaderboard alpaca_eval --annotations DIR_OR_FILE [...]`` reads official
``annotations.json`` files and prints win_rate, standard_error, n_wins, n_wins_base, n_draws,
n_total, discrete_win_rate, avg_length and length_controlled_winrate where computable:
* ``--df-gamed PATH|pinned``: full LC fit (the official GLM; needs ``df_gamed.csv``);
* ``--instruction-difficulty PATH|pinned|reconstructed``: LC predicted from the published per-model GLM
  weights (``lc_glm_weights/baseline_gpt4_1106_preview.csv``) for models listed there;
  ``reconstructed`` derives d_k from staged files (arena-hard-auto's stored GLM predictions inverted
  with those weights) and says so in a note.
``pinned`` downloads the file from the HF dataset ``tatsu-lab/alpaca_eval`` at a pinned revision and
checks its sha256. There is never a silent fallback: a missing file is an error naming it.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from harness.data import sha256_file
from harness.paths import check_name, safe_join
from harness.records import Completion, Instance, Judgment, Score
from harness.store import atomic_write_text
from reports import alpaca_eval_metrics as M
from tasks.base import GenerationSpec, Task

BASELINE = "gpt4_1106_preview"
HF_REPO = "tatsu-lab/alpaca_eval"
HF_REVISION = "2edc6fad8be6b14ea7230aabfd08188da6b8b814"
PINNED_SHA256 = {
    "df_gamed.csv": "97aeec3f1c7de6dee6fd31fe66f1702623f4614c3efe1c6fc5f4927cd5fd674d",
    "instruction_difficulty.csv": "e28d875bb334f75e17acd1e4ed659b261860e3db379cf5de29060301bed0a18b",
}
LEADERBOARD_COLUMNS = ["win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
                       "discrete_win_rate", "avg_length", "length_controlled_winrate"]
REQUIRED_FIELDS = ("instruction", "output_1", "output_2", "generator_2", "preference")


# ----------------------------------------------------------------------------- data locations
def resolve_data_dir(data_dir=None) -> Path:
    if data_dir:
        return Path(data_dir)
    from harness.data import data_dir as default

    return default()


def fetch_pinned(filename: str, cache_dir: str | None = None) -> Path:
    """Download ``filename`` from the HF dataset at the pinned revision and verify its sha256."""
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id=HF_REPO, filename=filename, repo_type="dataset",
                                    revision=HF_REVISION, cache_dir=cache_dir))
    except Exception as e:  # offline, 404, auth: one clear message
        raise FileNotFoundError(
            f"{filename}: could not download from HF dataset {HF_REPO}@{HF_REVISION[:12]} "
            f"({type(e).__name__}); pass a local copy with --{filename.split('.')[0].replace('_', '-')} PATH"
        ) from None
    digest = sha256_file(path)
    if digest != PINNED_SHA256[filename]:
        raise ValueError(f"{path}: sha256 {digest} does not match the pinned {PINNED_SHA256[filename]}")
    return path


def resolve_lc_file(value: str | None, filename: str) -> Path | None:
    """``None`` -> not used; ``pinned`` -> pinned download; otherwise a local path that must exist."""
    if not value:
        return None
    if value == "pinned":
        return fetch_pinned(filename)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {filename} not found")
    return path


def read_difficulty(path: Path) -> pd.Series:
    """instruction_difficulty.csv (``index,instruction_difficulty``), as ``read_csv(index_col=0).squeeze()``."""
    df = pd.read_csv(path, index_col=0)
    if "instruction_difficulty" not in df.columns:
        raise ValueError(f"{path}: column 'instruction_difficulty' missing")
    d = df["instruction_difficulty"]
    if d.isna().any():
        raise ValueError(f"{path}: field 'instruction_difficulty' has missing values")
    return d


def read_weights(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, index_col=0)
    missing = [t for t in M.GLM_TERMS if t not in df.columns]
    if missing:
        raise ValueError(f"{path}: GLM weights lack column(s) {missing}")
    return df


def read_df_gamed(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    if "model" in df.columns:
        df = df.drop(columns=["model"])
    need = ["index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: df_gamed.csv lacks column(s) {missing}")
    return df


GLM_PREDICTIONS_FILE = "ah_alpaca_2.0_lc_results.jsonl"


def reconstruct_difficulty_from(path: Path, weights: pd.DataFrame) -> pd.Series:
    """d_k from the per-instruction LC GLM predictions stored by arena-hard-auto (``notebook/
    alpaca_2.0_lc_results.jsonl``, staged in lc_glm_weights/) and the published per-model weights.
    An honest stand-in for instruction_difficulty.csv: it reproduces the leaderboard's LC prediction
    to ~1e-10 for most models (see ``reports.alpaca_eval_metrics.reconstruct_difficulty``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stored GLM predictions not found (needed for 'reconstructed')")
    preds = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            if "model" not in r or "length_controlled_winrate" not in r:
                raise ValueError(f"{path}: line {n} lacks field 'model' or 'length_controlled_winrate'")
            preds[r["model"]] = r["length_controlled_winrate"]
    return M.reconstruct_difficulty(preds, weights)["instruction_difficulty"]


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


def check_canonical_order(instructions: list[str], canonical: list[str], where: str) -> None:
    """LC pairs instruction k with row position k: the rows must be the canonical instructions, in order
    (a prefix is accepted, as upstream works with llama-2-70b-chat-hf's 804 rows)."""
    if len(instructions) > len(canonical):
        raise ValueError(f"{where}: {len(instructions)} rows but only {len(canonical)} AlpacaEval instructions")
    for i, (a, b) in enumerate(zip(instructions, canonical)):
        if a != b:
            raise ValueError(f"{where}: row {i} field 'instruction' is not canonical instruction {i}; "
                             "LC needs annotations in the canonical 805-instruction order")


def model_metrics(df: pd.DataFrame, *, weights: pd.DataFrame | None = None, difficulty: pd.Series | None = None,
                  df_gamed: pd.DataFrame | None = None, canonical: list[str] | None = None,
                  where: str = "") -> tuple[dict, list[str]]:
    """Leaderboard row for one model's annotation rows, and notes about exclusions/LC source."""
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
    lc, source = math.nan, "none"
    if model == baseline:
        lc, source = 50.0, "baseline"
    elif df_gamed is not None:
        if canonical is not None:
            check_canonical_order(list(df["instruction"]), canonical, where)
        feats = M.lc_features(df["output_1"], df["output_2"], pref, M.difficulty_from_df_gamed(df_gamed))
        lc, source = M.fit_lc_glm(feats, df_gamed)["length_controlled_winrate"], "glm_fit"
    elif weights is not None and difficulty is not None:
        if model in weights.index and baseline in weights.index:
            lc, source = M.predict_lc_winrate(weights, model, baseline, difficulty), "predicted"
        else:
            notes.append(f"{where}: '{model}' has no published GLM weights; LC needs --df-gamed (full fit)")
    row["length_controlled_winrate"] = lc
    row["lc_source"] = source
    if source in ("glm_fit", "predicted") and M.is_extreme_change(row["win_rate"], lc):
        notes.append(f"{where}: LC {lc:.1f} is very different from the raw win rate {row['win_rate']:.1f}")
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
class AlpacaEval(Task):
    name = "alpaca_eval"
    default_judge = "weighted_alpaca_eval_gpt4_turbo"
    primary_metric = "win_rate"
    official_metrics = ["win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate"]

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
        frames, failures = self.annotation_frames(instances, completions, judgments)
        df_gamed = None
        path = resolve_lc_file(self.options.get("df_gamed"), "df_gamed.csv")
        if path is not None:
            df_gamed = read_df_gamed(path)
        results = {}
        for model, df in frames.items():
            complete = len(df) == len(instances) and list(df["k"]) == list(range(len(df)))
            row, notes = model_metrics(df, df_gamed=df_gamed if complete else None, where=f"model {model}")
            for n in notes:
                print(f"note: {n}", file=sys.stderr)
            row["n_parse_failures"] = failures.get(model, 0)
            lc_source = row.pop("lc_source")
            if lc_source == "none":
                row.pop("length_controlled_winrate")
            results[model] = row
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
                            help="df_gamed.csv path, or 'pinned' to download it: full LC GLM fit per model")
        parser.add_argument("--instruction-difficulty", default=None,
                            help="instruction_difficulty.csv path, 'pinned' (download), or 'reconstructed' "
                                 "(derived from staged files): LC predicted from published weights")
        parser.add_argument("--glm-weights", default=None,
                            help="per-model GLM weights CSV (default: the staged lc_glm_weights file)")
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
        df_gamed_path = resolve_lc_file(getattr(args, "df_gamed", None), "df_gamed.csv")
        diff_option = getattr(args, "instruction_difficulty", None)
        reconstructed = diff_option == "reconstructed"
        diff_path = None if reconstructed else resolve_lc_file(diff_option, "instruction_difficulty.csv")
        df_gamed = read_df_gamed(df_gamed_path) if df_gamed_path else None
        weights = None
        if diff_option:
            wpath = Path(getattr(args, "glm_weights", None) or
                         data / "lc_glm_weights" / "baseline_gpt4_1106_preview.csv")
            if not wpath.is_file():
                raise FileNotFoundError(f"{wpath}: GLM weights CSV not found (--glm-weights)")
            weights = read_weights(wpath)
        difficulty = read_difficulty(diff_path) if diff_path else None
        if reconstructed:
            difficulty = reconstruct_difficulty_from(data / "lc_glm_weights" / GLM_PREDICTIONS_FILE, weights)
        canonical = None
        if df_gamed is not None:
            ref = Path(getattr(args, "reference_outputs", None) or
                       data / "reference_outputs" / BASELINE / "model_outputs.json")
            canonical = [r["instruction"] for r in read_reference(ref)]
        rows, notes, seen = {}, [], {}
        for path in find_annotation_files(list(args.annotations)):
            for model, df in read_annotations(path).items():
                if model in seen:
                    raise ValueError(f"{path}: model '{model}' already read from {seen[model]}")
                seen[model] = path
                row, n = model_metrics(df, weights=weights, difficulty=difficulty, df_gamed=df_gamed,
                                       canonical=canonical, where=str(path))
                rows[model] = row
                notes.extend(n)
        table = pd.DataFrame.from_dict(rows, orient="index")
        cols = LEADERBOARD_COLUMNS + ["lc_source"]
        table = table[cols]
        key = table["length_controlled_winrate"].fillna(table["win_rate"])
        table = table.loc[key.sort_values(ascending=False, kind="stable").index]
        if reconstructed:
            notes.append("LC predicted with instruction difficulty reconstructed from arena-hard-auto's stored GLM "
                         "predictions (not the official instruction_difficulty.csv)")
        if diff_path is not None and diff_path.is_file():
            digest = sha256_file(diff_path)
            if digest != PINNED_SHA256["instruction_difficulty.csv"]:
                notes.append(f"{diff_path}: not the official instruction_difficulty.csv (sha256 {digest[:12]}...); "
                             "predicted LC values use this file")
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
