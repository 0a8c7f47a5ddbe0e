"""AlpacaEval 2.0 length-controlled win rate by default: the leaderboard command and a run's aggregate
carry LC whenever its inputs can be found, say how it was computed, and label it official only when it
is the official computation on the official judge's outputs."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data import sha256_file
from harness.records import Completion, Judgment
from harness.run_leaderboard import run_leaderboard_frame
from reports import alpaca_eval_metrics as M
from tasks import alpaca_eval_lc as LC
from tasks.alpaca_eval import AlpacaEval, read_annotations, read_weights
from test_alpaca_eval import ANN, LB, WEIGHTS, _alpaca_eval_or_skip, _synthetic_df_gamed, args_for

PREDICTED_RECONSTRUCTED = LC.src_predicted(LC.DIFF_RECONSTRUCTED)
NOREG_RECONSTRUCTED = LC.src_noreg(LC.DIFF_RECONSTRUCTED)


@pytest.fixture(autouse=True)
def no_hf_cache(monkeypatch):
    """Whatever this machine's HF cache holds, the tests see no cached official file."""
    monkeypatch.setattr(LC, "cached_pinned", lambda filename: None)


@pytest.fixture(scope="module")
def published(data_dir) -> pd.DataFrame:
    return pd.read_csv(data_dir / LB, index_col=0)


@pytest.fixture(scope="module")
def reconstructed(data_dir) -> pd.Series:
    return LC.reconstruct_difficulty_from(data_dir / "alpaca_eval_2/lc_glm_weights" / LC.GLM_PREDICTIONS_FILE,
                                          read_weights(data_dir / WEIGHTS))


def _renamed_copy(data_dir, tmp_path, source: str, name: str) -> Path:
    rows = json.loads((data_dir / ANN / source / "annotations.json").read_text())
    for r in rows:
        r["generator_2"] = name
    path = tmp_path / name / "annotations.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rows))
    return path


def _bare_data_dir(data_dir, tmp_path) -> Path:
    """A data root with the reference outputs but none of the LC inputs."""
    root = tmp_path / "data"
    (root / "alpaca_eval_2").mkdir(parents=True)
    shutil.copytree(data_dir / "alpaca_eval_2/reference_outputs", root / "alpaca_eval_2/reference_outputs")
    return root


# ----------------------------------------------------------------------------- file leaderboard
def test_default_command_prints_lc_with_its_source(data_dir, published):
    text = AlpacaEval.leaderboard(args_for("--annotations", str(data_dir / ANN), "--format", "csv"))
    ours = pd.read_csv(io.StringIO(text), index_col="model")
    assert len(ours) >= 12 and ours["length_controlled_winrate"].notna().all()
    diff = (ours["length_controlled_winrate"] - published.loc[ours.index, "length_controlled_winrate"]).abs()
    assert diff.max() < 0.02
    assert ours.loc["gpt4_1106_preview", "lc_source"] == LC.SRC_BASELINE
    assert (ours.drop(index="gpt4_1106_preview")["lc_source"] == PREDICTED_RECONSTRUCTED).all()
    md = AlpacaEval.leaderboard(args_for("--annotations", str(data_dir / ANN / "claude-2")))
    header, _, row = md.splitlines()[:3]
    assert "length_controlled_winrate" in header and "lc_source" in header
    assert f"| {published.loc['claude-2', 'length_controlled_winrate']:.2f} |" in row
    assert PREDICTED_RECONSTRUCTED in row


@pytest.mark.filterwarnings("ignore::FutureWarning")  # sklearn deprecations inside alpaca_eval's own fit
def test_model_without_published_weights_gets_noreg_fit_equal_to_alpaca_eval(
        data_dir, tmp_path, monkeypatch, reconstructed):
    glm, _, _ = _alpaca_eval_or_skip()
    path = _renamed_copy(data_dir, tmp_path, "alpaca-7b", "my-model")
    table, notes = AlpacaEval.leaderboard_table(args_for("--annotations", str(path)))
    assert table.loc["my-model", "lc_source"] == NOREG_RECONSTRUCTED
    # the package's length_controlled_noreg GLM, handed a df_gamed.csv carrying the same difficulty
    gamed = pd.DataFrame({"model": "none", "index": np.arange(len(reconstructed)),
                          "instruction_difficulty": reconstructed.to_numpy()})
    gamed_path = tmp_path / "df_gamed.csv"
    gamed.to_csv(gamed_path, index=False)
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kw: str(gamed_path))
    theirs = glm.get_length_controlled_winrate(pd.DataFrame(json.loads(path.read_text())),
                                               glm_name="length_controlled_noreg", save_weights_dir=None,
                                               is_warn_extreme_changes=False)
    assert table.loc["my-model", "length_controlled_winrate"] == pytest.approx(
        theirs["length_controlled_winrate"], abs=1e-9)
    assert sum("length_controlled_noreg" in n for n in notes) == 1


def test_published_name_with_other_outputs_is_fitted_not_predicted(data_dir, tmp_path, published):
    path = _renamed_copy(data_dir, tmp_path, "alpaca-7b", "vicuna-13b")  # a run exported under a published name
    table, notes = AlpacaEval.leaderboard_table(args_for("--annotations", str(path)))
    assert table.loc["vicuna-13b", "lc_source"] == NOREG_RECONSTRUCTED
    assert abs(table.loc["vicuna-13b", "length_controlled_winrate"]
               - published.loc["vicuna-13b", "length_controlled_winrate"]) > 1
    assert any("vicuna-13b" in n and "published leaderboard" in n for n in notes)


def test_nothing_computable_leaves_lc_empty_with_one_reason(data_dir, tmp_path):
    root = _bare_data_dir(data_dir, tmp_path)
    table, notes = AlpacaEval.leaderboard_table(args_for(
        "--annotations", str(data_dir / ANN / "claude-2"), str(data_dir / ANN / "vicuna-13b"),
        "--data-dir", str(root)))
    assert table["length_controlled_winrate"].isna().all() and (table["lc_source"] == LC.SRC_NONE).all()
    reasons = [n for n in notes if "LC not computed" in n]
    assert len(reasons) == 1 and "claude-2" in reasons[0] and "vicuna-13b" in reasons[0]
    assert "instruction_difficulty.csv" in reasons[0]


def test_official_difficulty_file_is_found_and_checked(data_dir, tmp_path, reconstructed, published, monkeypatch):
    root = _bare_data_dir(data_dir, tmp_path)
    lc_dir = root / "alpaca_eval_2/lc_glm_weights"
    lc_dir.mkdir()
    shutil.copy(data_dir / WEIGHTS, lc_dir)
    (root / "alpaca_eval_2/leaderboard").mkdir()
    shutil.copy(data_dir / LB, root / "alpaca_eval_2/leaderboard")
    diff_path = lc_dir / "instruction_difficulty.csv"
    reconstructed.to_frame().to_csv(diff_path)
    args = args_for("--annotations", str(data_dir / ANN / "claude-2"), "--data-dir", str(root))
    with pytest.raises(ValueError, match=r"instruction_difficulty.csv: sha256 .* not the pinned"):
        AlpacaEval.leaderboard_table(args)
    monkeypatch.setitem(LC.PINNED_SHA256, "instruction_difficulty.csv", sha256_file(diff_path))
    table, _ = AlpacaEval.leaderboard_table(args)
    assert table.loc["claude-2", "lc_source"] == LC.src_predicted(LC.DIFF_OFFICIAL)
    assert table.loc["claude-2", "length_controlled_winrate"] == pytest.approx(
        published.loc["claude-2", "length_controlled_winrate"], abs=0.02)


def test_default_fit_of_rows_out_of_order_leaves_lc_empty_with_reason(data_dir, tmp_path):
    path = _renamed_copy(data_dir, tmp_path, "vicuna-13b", "mine")
    rows = json.loads(path.read_text())
    rows[0], rows[1] = rows[1], rows[0]
    path.write_text(json.dumps(rows))
    table, notes = AlpacaEval.leaderboard_table(args_for("--annotations", str(path), str(data_dir / ANN / "claude-2")))
    assert np.isnan(table.loc["mine", "length_controlled_winrate"]) and table.loc["mine", "lc_source"] == LC.SRC_NONE
    assert table.loc["claude-2", "lc_source"] == PREDICTED_RECONSTRUCTED
    assert any("LC not computed for 1 model(s) (mine)" in n and "not canonical instruction 0" in n for n in notes)


# ----------------------------------------------------------------------------- a run's aggregate
def _records(data_dir, task, name: str, source: str, judge_model: str = "j"):
    instances = task.load()
    rows = json.loads((data_dir / ANN / source / "annotations.json").read_text())
    comps, judgments = [], []
    for inst, r in zip(instances, rows):
        comps.append(Completion(task="alpaca_eval", instance_id=inst.id, model=name, texts=[r["output_2"]]))
        if r["output_2"] != inst.reference[0]:
            judgments.append(Judgment(task="alpaca_eval", instance_id=inst.id, model=name,
                                      judge="weighted_alpaca_eval_gpt4_turbo", judge_model=judge_model,
                                      judge_config_hash="h", criterion="preference", value=r["preference"]))
    return instances, comps, judgments


def test_run_aggregate_carries_lc_and_it_is_not_official(data_dir, tmp_path):
    task = AlpacaEval(data_dir=data_dir)
    inst, comps, judg = _records(data_dir, task, "gemma-7b-it", "gemma-7b-it")  # a published name
    res = task.aggregate(inst, comps, judg, [])["gemma-7b-it"]
    assert res["lc_source"] == NOREG_RECONSTRUCTED  # the run's outputs never get published weights
    path = _renamed_copy(data_dir, tmp_path, "gemma-7b-it", "other")
    table, _ = AlpacaEval.leaderboard_table(args_for("--annotations", str(path)))
    assert res["length_controlled_winrate"] == pytest.approx(table.loc["other", "length_controlled_winrate"], abs=1e-12)
    assert "length_controlled_winrate" not in res["official_metrics"]
    assert "win_rate" in res["official_metrics"]
    frame = run_leaderboard_frame({"alpaca_eval": {"gemma-7b-it": {**res, "primary_metric": "win_rate"}}})
    assert frame.loc[0, "alpaca_eval/length_controlled_winrate"] == res["length_controlled_winrate"]
    assert frame.loc[0, "alpaca_eval/lc_source"] == NOREG_RECONSTRUCTED


def test_run_aggregate_v1_fit_official_only_with_pinned_file_and_official_judge(data_dir, tmp_path, monkeypatch,
                                                                              reconstructed):
    gamed_path = tmp_path / "df_gamed.csv"
    _synthetic_df_gamed(data_dir, reconstructed).to_csv(gamed_path, index=False)
    task = AlpacaEval({"df_gamed": str(gamed_path)}, data_dir=data_dir)
    name = "alpaca-7b"
    inst, comps, judg = _records(data_dir, task, name, name, judge_model="gpt-4-1106-preview")
    res = task.aggregate(inst, comps, judg, [])[name]
    df = read_annotations(data_dir / ANN / name / "annotations.json")[name]
    gamed = pd.read_csv(gamed_path).drop(columns=["model"])
    feats = M.lc_features(df["output_1"], df["output_2"], df["preference"], M.difficulty_from_df_gamed(gamed))
    assert res["length_controlled_winrate"] == pytest.approx(
        M.fit_lc_glm(feats, gamed)["length_controlled_winrate"], abs=1e-12)
    assert res["lc_source"] == LC.src_fit_v1(official=False)
    assert "length_controlled_winrate" not in res["official_metrics"]  # not the pinned df_gamed.csv
    monkeypatch.setitem(LC.PINNED_SHA256, "df_gamed.csv", sha256_file(gamed_path))
    res = task.aggregate(inst, comps, judg, [])[name]
    assert res["lc_source"] == LC.src_fit_v1(official=True)
    assert "length_controlled_winrate" in res["official_metrics"]
    inst, comps, judg = _records(data_dir, task, name, name, judge_model="some-local-judge")
    res = task.aggregate(inst, comps, judg, [])[name]
    assert res["lc_source"] == LC.src_fit_v1(official=True)
    assert "length_controlled_winrate" not in res["official_metrics"]  # not the official judge


def test_run_aggregate_without_lc_inputs_gives_reason_once(data_dir, tmp_path, capsys):
    root = _bare_data_dir(data_dir, tmp_path)
    task = AlpacaEval(data_dir=root)
    i1, c1, j1 = _records(data_dir, task, "a", "claude-2")
    _, c2, j2 = _records(data_dir, task, "b", "vicuna-13b")
    out = task.aggregate(i1, c1 + c2, j1 + j2, [])
    for m in ("a", "b"):
        assert "length_controlled_winrate" not in out[m] and out[m]["lc_source"] == LC.SRC_NONE
        assert "instruction_difficulty.csv" in out[m]["lc_reason"]
    assert capsys.readouterr().err.count("LC not computed") == 1
