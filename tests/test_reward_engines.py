"""Reward engines without vLLM installed: the value-head view vLLM loads, the engine option's errors."""
from __future__ import annotations

import json

import pytest

from tests.support.reward_models import build_seq_cls_rm, build_value_head_rm


@pytest.fixture(scope="module")
def value_head_rm(tiny_model_dir, tmp_path_factory):
    return build_value_head_rm(tiny_model_dir, tmp_path_factory.mktemp("rm") / "janus-rm")


def test_value_head_view_is_a_one_label_classifier_with_the_head_renamed(value_head_rm, tmp_path):
    from safetensors import safe_open

    from harness.backends.vllm_reward import vllm_view_dir

    view = vllm_view_dir(value_head_rm, tmp_path)
    config = json.loads((view / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["num_labels"] == 1
    assert config["mean"] == 0.1 and config["std"] == 1.5  # kept: the engine normalises with them
    with safe_open(str(view / "model.safetensors"), "pt") as new, \
            safe_open(str(value_head_rm / "model.safetensors"), "pt") as old:
        assert "value_head.weight" not in new.keys()
        assert (new.get_tensor("score.weight") == old.get_tensor("value_head.weight")).all()
        assert set(new.keys()) - {"score.weight"} == set(old.keys()) - {"value_head.weight"}
    assert (view / "tokenizer.json").is_symlink()
    # written once: a second call reuses the view
    stamp = (view / "config.json").stat().st_mtime_ns
    assert vllm_view_dir(value_head_rm, tmp_path) == view
    assert (view / "config.json").stat().st_mtime_ns == stamp
    # the checkpoint is not touched
    assert json.loads((value_head_rm / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_sequence_classifier_needs_no_view(tiny_model_dir, tmp_path):
    from harness.backends.vllm_reward import vllm_view_dir

    rm = build_seq_cls_rm(tiny_model_dir, tmp_path / "seqcls")
    assert vllm_view_dir(rm, tmp_path / "views") == rm
    assert not (tmp_path / "views").exists()


def test_engine_option_errors(tiny_model_dir, tmp_path):
    from harness.scorers import RewardModelScorer

    rm = build_seq_cls_rm(tiny_model_dir, tmp_path / "seqcls")
    with pytest.raises(ValueError, match="engine must be one of hf, vllm"):
        RewardModelScorer(str(rm), engine="onnx")
    hf = RewardModelScorer(str(rm))
    vllm = RewardModelScorer(str(rm), engine="vllm")  # no weights loaded yet: vLLM starts on first use
    assert vllm.batcher.scorer.model is None and hf.batcher.scorer.model is not None
    assert vllm.version != hf.version
    try:
        import vllm as _  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="reward engine 'vllm' needs vLLM"):
            vllm.batcher.score([(None, "q", "a")])


def test_rerank_cli_and_experiment_take_the_engine(tmp_path):
    from harness.experiment import parse_experiment

    exp = parse_experiment({"best_of": [{"task": "t", "model": "m", "reward_model": "rm", "reward_engine": "vllm"}]},
                           "cfg.yaml")
    assert exp.best_of[0].reward_engine == "vllm"
    with pytest.raises(ValueError, match=r"best_of\[0\].reward_engine"):
        parse_experiment({"best_of": [{"task": "t", "model": "m", "reward_model": "rm", "reward_engine": "x"}]},
                         "cfg.yaml")
