"""AlpacaEval 2.0 length-controlled (LC) win rate: where its inputs come from and which computation applies.

The statistics are in ``reports/alpaca_eval_metrics.py``; this module finds files and picks the method.

Inputs (an option naming one wins; without options nothing is downloaded):
* published per-model GLM weights: ``lc_glm_weights/baseline_gpt4_1106_preview.csv``;
* instruction difficulty d_k: the official ``instruction_difficulty.csv`` (in ``lc_glm_weights/`` or in
  the HF cache at the pinned revision; sha256 checked), else reconstructed from staged files
  (arena-hard-auto's stored GLM predictions inverted with the published weights);
* ``df_gamed.csv`` (the same places): the rows the official ``length_controlled_v1`` fit needs.

Per model (:func:`compute_lc`):
1. the baseline itself: 50 by definition;
2. ``df_gamed`` given as an option: the v1 fit for every model, as ``alpaca_eval evaluate`` does;
3. published annotations of a model with published weights: predicted from them (``predict_winrate``).
   The annotations must equal the published leaderboard row (win_rate, avg_length), so that other
   outputs under a published name (a run exported with ``harness export``) are fitted instead;
4. otherwise a fit: v1 when df_gamed.csv is at hand, else ``length_controlled_noreg`` (the same GLM
   without the gamed-baseline rows, which only df_gamed.csv has; ~1 point from v1, see PROVENANCE.md);
5. else no LC, with the reason.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.data import sha256_file
from reports import alpaca_eval_metrics as M

HF_REPO = "tatsu-lab/alpaca_eval"
HF_REVISION = "2edc6fad8be6b14ea7230aabfd08188da6b8b814"
PINNED_SHA256 = {
    "df_gamed.csv": "97aeec3f1c7de6dee6fd31fe66f1702623f4614c3efe1c6fc5f4927cd5fd674d",
    "instruction_difficulty.csv": "e28d875bb334f75e17acd1e4ed659b261860e3db379cf5de29060301bed0a18b",
}
WEIGHTS_FILE = "baseline_gpt4_1106_preview.csv"
GLM_PREDICTIONS_FILE = "ah_alpaca_2.0_lc_results.jsonl"
LEADERBOARD_FILE = "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
#: the judge model of weighted_alpaca_eval_gpt4_turbo (annotator configs.yaml, completions_kwargs.model_name)
OFFICIAL_JUDGE_MODEL = "gpt-4-1106-preview"

# the values of ``lc_source``
DIFF_OFFICIAL = "official difficulty"
DIFF_RECONSTRUCTED = "reconstructed difficulty"
DIFF_FILE = "difficulty file (not official)"
SRC_BASELINE = "baseline (50 by definition)"
SRC_NONE = "none"


def src_predicted(difficulty_label: str) -> str:
    return f"published GLM weights, {difficulty_label}"


def src_fit_v1(official: bool) -> str:
    return "GLM fit length_controlled_v1, " + ("pinned df_gamed.csv" if official else "df_gamed.csv (not pinned)")


def src_noreg(difficulty_label: str) -> str:
    return f"GLM fit length_controlled_noreg, {difficulty_label}"


# ----------------------------------------------------------------------------- files
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
    check_pinned(path, filename)
    return path


def check_pinned(path: Path, filename: str) -> None:
    digest = sha256_file(path)
    if digest != PINNED_SHA256[filename]:
        raise ValueError(f"{path}: sha256 {digest} is not the pinned official {filename} ({PINNED_SHA256[filename]}); "
                         f"pass it explicitly with --{filename.split('.')[0].replace('_', '-')} PATH to use it")


def is_pinned(path: Path, filename: str) -> bool:
    return sha256_file(path) == PINNED_SHA256[filename]


def cached_pinned(filename: str) -> Path | None:
    """The file in the local HF cache at the pinned revision, if there (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(HF_REPO, filename, revision=HF_REVISION, repo_type="dataset")
    except Exception:  # no huggingface_hub, unreadable cache: treated as not cached
        return None
    return Path(found) if isinstance(found, str) else None


def find_official(data: Path, filename: str) -> Path | None:
    """``lc_glm_weights/<filename>`` or the HF cache copy; one that is not the pinned file is an error."""
    local = data / "lc_glm_weights" / filename
    path = local if local.is_file() else cached_pinned(filename)
    if path is not None:
        check_pinned(path, filename)
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


def read_published(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, index_col=0)
    missing = [c for c in ("win_rate", "avg_length") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: leaderboard CSV lacks column(s) {missing}")
    return df


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


# ----------------------------------------------------------------------------- inputs
@dataclass
class LCInputs:
    weights: pd.DataFrame | None = None  # published per-model GLM weights (for prediction)
    weights_explicit: bool = False  # --glm-weights given: its model names are trusted
    published: pd.DataFrame | None = None  # published leaderboard rows, to recognise published annotations
    difficulty: pd.Series | None = None  # d_k by canonical instruction index
    difficulty_label: str = ""
    df_gamed: pd.DataFrame | None = None
    df_gamed_official: bool = False
    fit_all: bool = False  # df_gamed given as an option: fit every model
    reason: str = ""  # why no fit is possible (no difficulty, no df_gamed)
    notes: list[str] = field(default_factory=list)


def load_inputs(data: Path, *, difficulty: str | None = None, df_gamed: str | None = None,
                glm_weights: str | None = None, predict: bool = True) -> LCInputs:
    """Every LC input that can be found. ``data`` is the ``alpaca_eval_2`` folder; ``predict`` False
    (a run's own outputs) skips what only the prediction from published weights needs."""
    out = LCInputs()
    gamed_path = resolve_lc_file(df_gamed, "df_gamed.csv")
    out.fit_all = gamed_path is not None
    if gamed_path is None:
        gamed_path = find_official(data, "df_gamed.csv")
    if gamed_path is not None:
        out.df_gamed = read_df_gamed(gamed_path)
        out.df_gamed_official = is_pinned(gamed_path, "df_gamed.csv")

    wpath = Path(glm_weights) if glm_weights else data / "lc_glm_weights" / WEIGHTS_FILE
    if glm_weights and not wpath.is_file():
        raise FileNotFoundError(f"{wpath}: GLM weights CSV not found (--glm-weights)")
    weights = read_weights(wpath) if wpath.is_file() else None
    if predict:
        out.weights, out.weights_explicit = weights, bool(glm_weights)
        lb = data / "leaderboard" / LEADERBOARD_FILE
        out.published = read_published(lb) if lb.is_file() else None

    preds = data / "lc_glm_weights" / GLM_PREDICTIONS_FILE
    if difficulty == "reconstructed":
        if weights is None:
            raise FileNotFoundError(f"{wpath}: GLM weights CSV not found (needed for 'reconstructed')")
        out.difficulty, out.difficulty_label = reconstruct_difficulty_from(preds, weights), DIFF_RECONSTRUCTED
    elif difficulty:
        path = resolve_lc_file(difficulty, "instruction_difficulty.csv")
        out.difficulty = read_difficulty(path)
        if is_pinned(path, "instruction_difficulty.csv"):
            out.difficulty_label = DIFF_OFFICIAL
        else:
            out.difficulty_label = DIFF_FILE
            out.notes.append(f"{path}: not the official instruction_difficulty.csv (sha256 "
                             f"{sha256_file(path)[:12]}...); LC values use this file")
    elif (path := find_official(data, "instruction_difficulty.csv")) is not None:
        out.difficulty, out.difficulty_label = read_difficulty(path), DIFF_OFFICIAL
    elif weights is not None and preds.is_file():
        out.difficulty, out.difficulty_label = reconstruct_difficulty_from(preds, weights), DIFF_RECONSTRUCTED
    if out.difficulty is None and out.df_gamed is None:
        out.reason = (f"no instruction difficulty: instruction_difficulty.csv is neither in {data / 'lc_glm_weights'} "
                      f"nor in the HF cache at {HF_REPO}@{HF_REVISION[:12]}, and {preds.name} or {WEIGHTS_FILE} "
                      "to reconstruct it is missing; pass --instruction-difficulty or --df-gamed")
    return out


def describe(inputs: LCInputs) -> list[str]:
    """One note per input that makes these LC values differ from the official ones."""
    notes = list(inputs.notes)
    if inputs.difficulty_label == DIFF_RECONSTRUCTED:
        notes.append("LC uses instruction difficulty reconstructed from arena-hard-auto's stored GLM predictions "
                     "(not the official instruction_difficulty.csv)")
    return notes


# ----------------------------------------------------------------------------- per model
def check_canonical_order(instructions: list[str], canonical: list[str], where: str) -> None:
    """A fit pairs instruction k with row position k: the rows must be the canonical instructions, in order
    (a prefix is accepted, as upstream works with llama-2-70b-chat-hf's 804 rows)."""
    if len(instructions) > len(canonical):
        raise ValueError(f"{where}: {len(instructions)} rows but only {len(canonical)} AlpacaEval instructions")
    for i, (a, b) in enumerate(zip(instructions, canonical)):
        if a != b:
            raise ValueError(f"{where}: row {i} field 'instruction' is not canonical instruction {i}; "
                             "LC needs annotations in the canonical 805-instruction order")


def is_published_row(inputs: LCInputs, model: str, win_rate: float, avg_len: int) -> tuple[bool, str]:
    """Whether these annotations are the ones the published weights were fitted on."""
    if inputs.weights is None or model not in inputs.weights.index:
        return False, ""
    if inputs.weights_explicit:
        return True, ""
    if inputs.published is None or model not in inputs.published.index:
        return False, f"'{model}' has published GLM weights but no published leaderboard row to check against"
    ref = inputs.published.loc[model]
    if abs(float(ref["win_rate"]) - win_rate) < 1e-6 and int(ref["avg_length"]) == avg_len:
        return True, ""
    return False, (f"'{model}': annotations differ from its published leaderboard row (win_rate {win_rate:.4f} "
                   f"vs {float(ref['win_rate']):.4f}); LC fitted, not predicted from the published weights")


def _fit(df: pd.DataFrame, lookup: pd.Series, index, df_gamed: pd.DataFrame | None) -> float:
    """The GLM fit on one model's rows; ``index`` = canonical instruction index of each row."""
    idx = list(range(len(df))) if index is None else [int(i) for i in index]
    missing = [i for i in idx if i not in lookup.index]
    if missing:
        raise ValueError(f"no instruction difficulty for instruction(s) {missing[:5]}")
    by_row = pd.Series(lookup.loc[idx].to_numpy(dtype=float))
    feats = M.lc_features(df["output_1"], df["output_2"], df["preference"], by_row)
    lam = M.REGULARIZE_TO_BASELINE_LAMBDA if df_gamed is not None else None
    return M.fit_lc_glm(feats, df_gamed, regularize_to_baseline_lambda=lam)["length_controlled_winrate"]


def compute_lc(df: pd.DataFrame, inputs: LCInputs, *, model: str, baseline: str, win_rate: float,
               avg_len: int, published_annotations: bool, index=None, canonical: list[str] | None = None,
               where: str = "") -> tuple[dict, list[str]]:
    """``{length_controlled_winrate, lc_source, lc_reason}`` for one model's annotation rows, and notes.
    ``published_annotations`` False for a run's own outputs: never predicted from published weights.
    A fit needs each row's instruction index: ``index`` (a run's instances), else the row position,
    checked against the ``canonical`` instruction list."""
    notes: list[str] = []

    def result(lc=math.nan, source=SRC_NONE, reason=None):
        return {"length_controlled_winrate": lc, "lc_source": source, "lc_reason": reason}, notes

    if model == baseline:
        return result(50.0, SRC_BASELINE)
    predictable = False
    if published_annotations and not inputs.fit_all:
        predictable, why = is_published_row(inputs, model, win_rate, avg_len)
        if why:
            notes.append(why)
    if predictable and inputs.difficulty is not None and baseline in inputs.weights.index:
        lc = M.predict_lc_winrate(inputs.weights, model, baseline, inputs.difficulty)
        return result(lc, src_predicted(inputs.difficulty_label))
    if inputs.df_gamed is None and inputs.difficulty is None:
        return result(reason=inputs.reason)
    if index is None:
        if canonical is None:
            return result(reason="the reference outputs (canonical instruction order) were not found, so the "
                                 "rows cannot be paired with instruction difficulty")
        try:
            check_canonical_order(list(df["instruction"]), canonical, where)
        except ValueError as e:
            if inputs.fit_all:  # the fit was asked for: not doing it is an error
                raise
            return result(reason=str(e).removeprefix(f"{where}: "))
    try:
        if inputs.df_gamed is not None:
            lc = _fit(df, M.difficulty_from_df_gamed(inputs.df_gamed), index, inputs.df_gamed)
            return result(lc, src_fit_v1(inputs.df_gamed_official))
        return result(_fit(df, inputs.difficulty, index, None), src_noreg(inputs.difficulty_label))
    except ValueError as e:  # too few rows for the 5-fold CV, difficulty not covering the rows
        return result(reason=f"GLM fit failed: {e}")


def official_lc(source: str, judge_models: set[str]) -> bool:
    """LC is official only as the v1 fit with the pinned df_gamed.csv on the official judge's outputs."""
    return source == src_fit_v1(official=True) and judge_models == {OFFICIAL_JUDGE_MODEL}


def group_notes(per_model: dict[str, str], what: str) -> list[str]:
    """One note per distinct message, naming its models (a reason is printed once, not per model)."""
    by_msg: dict[str, list[str]] = {}
    for model, msg in per_model.items():
        by_msg.setdefault(msg, []).append(model)
    out = []
    for msg, models in by_msg.items():
        names = ", ".join(models[:8]) + (", ..." if len(models) > 8 else "")
        out.append(f"{what} {len(models)} model(s) ({names}): {msg}")
    return out


NOREG_NOTE = ("a length_controlled_noreg GLM fit: without df_gamed.csv the official length_controlled_v1 "
              "regularisation to the gamed baselines is not possible (differs from v1 by ~1 point, "
              "see alpaca_eval_2/PROVENANCE.md); pass --df-gamed for v1")

