"""A study in one config: `harness run` runs the experiment's stages (training, evaluation with
ablation variants, best-of-n, report) as one resumable graph."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import ConfigError, parse_config
from support.reward_models import build_seq_cls_rm

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tasks" / "multifaceted" / "readme_example.json"


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir, tmp_path_factory) -> Path:
    return build_seq_cls_rm(tiny_model_dir, tmp_path_factory.mktemp("rm") / "tiny-rm")


def _config(tmp_path: Path, data_dir: Path, reward_model: Path, **experiment) -> Path:
    raw = {"name": "study", "data_dir": str(data_dir), "seed": 0,
           "models": [{"name": "m", "backend": "scripted", "model": "writer", "system_variants": ["none"]}],
           "judge": {"name": "j", "backend": "scripted", "model": "judge"},
           "tasks": [{"name": "multifaceted_bench", "options": {"path": str(EXAMPLE)}},
                     {"name": "mt_bench", "limit": 2}],
           "experiment": {"best_of": [{"task": "multifaceted_bench", "model": "m", "reward_model": str(reward_model),
                                       "label": "rm", "n": [1, 2, 4], "max_tokens": 16}],
                          "report": {"out": str(tmp_path / "report"), "baseline": "m"}, **experiment}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_one_command_runs_the_study_and_a_rerun_repeats_nothing(tmp_path, data_dir, reward_model, capsys):
    cfg = _config(tmp_path, data_dir, reward_model)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "experiment stages:" in printed and "best-of-n m multifaceted_bench" in printed
    results = json.loads((out / "results.json").read_text())["results"]
    mf = set(results["multifaceted_bench"])
    assert {"m", "m@sys=none", "m@bo1[rm]", "m@bo2[rm]", "m@bo4[rm]"} <= mf
    assert set(results["mt_bench"]) == {"m", "m@sys=none"}
    assert (tmp_path / "report" / "report.html").exists()
    first = (out / "results.json").read_text()

    # the rerun: every stage finds its work done (no new model call anywhere)
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["results"] == json.loads(first)["results"]
    assert again["calls"]["sent"] == 0


def test_experiment_errors_name_the_field(tmp_path, data_dir, reward_model):
    raw = yaml.safe_load(_config(tmp_path, data_dir, reward_model).read_text())
    raw["experiment"]["best_of"][0]["model"] = "nobody"
    with pytest.raises(ConfigError, match=r"experiment.best_of\[0\].model: 'nobody' is not one of the run's models"):
        parse_config(raw, "study.yaml")
    raw = yaml.safe_load(_config(tmp_path, data_dir, reward_model).read_text())
    raw["experiment"]["train"] = [{"method": "ppo", "config": str(tmp_path / "study.yaml")}]
    with pytest.raises(ConfigError, match=r"experiment.train\[0\].method"):
        parse_config(raw, "study.yaml")
    raw = yaml.safe_load(_config(tmp_path, data_dir, reward_model).read_text())
    raw["experiment"]["stages"] = []
    with pytest.raises(ConfigError, match=r"experiment: unknown field\(s\) \['stages'\]"):
        parse_config(raw, "study.yaml")


def test_a_trained_model_named_by_path_waits_for_its_stage(tmp_path, data_dir, reward_model):
    """A model whose path a train stage writes is not checked (nor refused) before training."""
    train_cfg = tmp_path / "sft.yaml"
    train_cfg.write_text(yaml.safe_dump({"method": "sft", "model": "x", "output_dir": str(tmp_path / "sft-out"),
                                         "data": {"path": "demo:mt_bench_sft"}}))
    raw = yaml.safe_load(_config(tmp_path, data_dir, reward_model).read_text())
    raw["models"].append({"name": "trained", "backend": "hf", "model": str(tmp_path / "sft-out")})
    raw["experiment"]["train"] = [{"method": "sft", "config": str(train_cfg)}]
    cfg = parse_config(raw, "study.yaml")
    assert [m.name for m in cfg.models][-1] == "trained"
    raw["experiment"]["train"] = []
    with pytest.raises(ConfigError, match=r"models\[2\].model"):
        parse_config(raw, "study.yaml")
