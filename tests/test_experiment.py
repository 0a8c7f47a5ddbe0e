"""A study in one config: `harness run` runs the experiment's stages (training, evaluation with
ablation variants, best-of-n, report) as one resumable graph."""
from __future__ import annotations

import dataclasses
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


# ----------------------------------------------------------------------------- stages at once (jobs > 1)
def _study_stages(tmp_path: Path, evaluated: set | None = None) -> list:
    """An experiment's plan: a bench, a collection reading the bench's config, SFT, an RM and DPO from the
    SFT model, evaluation, best-of-n reranked by the RM and the report."""
    from harness.experiment import Experiment, TrainStage, parse_experiment, plan

    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({"generator": {"backend": "scripted", "model": "g"}}))
    coll = tmp_path / "coll.yaml"
    coll.write_text(yaml.safe_dump({"bench": str(bench), "generator": {"backend": "scripted", "model": "g"}}))
    sft, rm, dpo = (tmp_path / f"{m}.yaml" for m in ("sft", "rm", "dpo"))
    sft.write_text(yaml.safe_dump({"model": "base", "output_dir": str(tmp_path / "m" / "sft")}))
    rm.write_text(yaml.safe_dump({"model": "base", "output_dir": str(tmp_path / "m" / "rm")}))
    dpo.write_text(yaml.safe_dump({"model": str(tmp_path / "m" / "sft"), "output_dir": str(tmp_path / "m" / "dpo")}))
    exp = parse_experiment({"bench": [str(bench)], "collection": [str(coll)], "jobs": 2,
                            "train": [{"method": "sft", "config": str(sft)}, {"method": "rm", "config": str(rm)},
                                      {"method": "dpo", "config": str(dpo)}],
                            "best_of": [{"task": "t", "model": "base", "reward_model": str(tmp_path / "m" / "rm")}],
                            "report": {"out": str(tmp_path / "rep")}}, "study.yaml")
    assert isinstance(exp, Experiment) and exp.jobs == 2 and isinstance(exp.train[0], TrainStage)
    return plan(exp, "study.yaml", tmp_path / "run", evaluated=evaluated)


def test_the_plan_orders_only_what_depends_on_what(tmp_path):
    after = {s.name: set(s.after) for s in _study_stages(tmp_path)}
    assert after["bench bench"] == set() and after["collection coll"] == set()  # it reads the bench's config only
    assert after["train sft sft"] == after["train rm rm"] == {"collection coll"}
    assert after["train dpo dpo"] == {"collection coll", "train sft sft"}  # it starts from the SFT model
    assert after["evaluate"] == {"bench bench", "collection coll", "train sft sft", "train rm rm", "train dpo dpo"}
    assert after["best-of-n base t"] == {"evaluate"}
    assert after["report"] == {"judge best-of-n"}


def test_a_reward_model_the_evaluation_does_not_load_trains_beside_it(tmp_path):
    from harness.config import parse_config
    from harness.experiment import evaluated_paths

    m = tmp_path / "m"
    cfg = parse_config({"models": [{"name": "base", "backend": "scripted", "model": "base"},
                                   {"name": "dpo", "backend": "scripted", "model": str(m / "dpo")}],
                        "tasks": [{"name": "mt_bench"}]}, "study.yaml")
    evaluated = evaluated_paths(cfg)
    assert str(m / "dpo") in evaluated and str(m / "rm") not in evaluated
    after = {s.name: set(s.after) for s in _study_stages(tmp_path, evaluated)}
    # SFT is not evaluated here: DPO, which starts from it, is what the evaluation waits for
    assert after["evaluate"] == {"bench bench", "collection coll", "train dpo dpo"}
    assert after["best-of-n base t"] == {"evaluate", "train rm rm"}  # the reranker waits for its model
    # a judge served from the trained RM's directory makes the evaluation wait for it again
    cfg.judge = dataclasses.replace(cfg.models[0], name="j", serve={"model": str(m / "rm")})
    after = {s.name: set(s.after) for s in _study_stages(tmp_path, evaluated_paths(cfg))}
    assert "train rm rm" in after["evaluate"]


def _timed_cli(log: Path, fail: str | None = None, seconds: float = 0.6):
    """A cli_main that logs each stage's start and end (from the forked children) and sleeps in between."""
    import time

    def cli_main(argv):
        name = " ".join(argv)
        with log.open("a") as f:
            f.write(json.dumps({"ev": "start", "argv": argv, "t": time.time()}) + "\n")
        if fail and fail in name:  # fails early, while the stages beside it still run
            time.sleep(0.1)
            return 3
        time.sleep(seconds)
        with log.open("a") as f:
            f.write(json.dumps({"ev": "end", "argv": argv, "t": time.time()}) + "\n")
        return 0
    return cli_main


def test_independent_stages_run_at_once_and_each_waits_for_its_inputs(tmp_path):
    from harness.experiment import run_in_children

    stages = _study_stages(tmp_path)
    log = tmp_path / "log.jsonl"
    times = run_in_children(stages, _timed_cli(log), jobs=2)
    assert list(times) == [s.name for s in stages]
    events = [json.loads(x) for x in log.read_text().splitlines()]
    span = {}
    for e in events:
        key = " ".join(e["argv"][:4]) if e["argv"][0] != "train" else f"train {e['argv'][1]}"
        span.setdefault(key, {})[e["ev"]] = e["t"]
    bench, coll = span["bench build multifaceted --config"], span["bench build collection --config"]
    assert bench["start"] < coll["end"] and coll["start"] < bench["end"]  # side by side
    sft, rm, dpo = span["train sft"], span["train rm"], span["train dpo"]
    assert sft["start"] < rm["end"] and rm["start"] < sft["end"]
    assert min(sft["start"], rm["start"]) >= coll["end"] and dpo["start"] >= sft["end"]
    ev = next(v for k, v in span.items() if k.startswith("run "))
    assert ev["start"] >= max(bench["end"], rm["end"], dpo["end"])


def test_a_failing_stage_stops_the_others_and_the_experiment(tmp_path):
    from harness.experiment import run_in_children

    stages = _study_stages(tmp_path)
    log = tmp_path / "log.jsonl"
    with pytest.raises(SystemExit) as e:
        run_in_children(stages, _timed_cli(log, fail="build collection", seconds=3.0), jobs=2)
    assert e.value.code == 3
    events = [json.loads(x) for x in log.read_text().splitlines()]
    assert [e["argv"][2] for e in events if e["ev"] == "start"] == ["multifaceted", "collection"]
    assert not [e for e in events if e["ev"] == "end"]  # the bench build beside it was stopped
