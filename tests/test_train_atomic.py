"""Training outputs are replaced atomically: a kill at any point leaves the previous complete model (or no
output), never new weights beside an old card; ``harness.checkpoint.verify_checkpoint`` tells complete
training outputs from interrupted ones; a rerun removes what a killed run left behind."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from harness.checkpoint import (CARD_JSON, INCOMPLETE_MARKER, is_complete, list_files,  # noqa: E402
                                staging_dir_for, verify_checkpoint)

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "You are a patient tutor for a user who prefers short answers with one example."
STEPS = 3


def _rows():
    return [{"system": SYSTEM, "instruction": f"Question {i}: what is {i} plus {i}?",
             "output": f"{i} plus {i} is {2 * i}. For example, {i} apples and {i} apples make {2 * i}."}
            for i in range(10)]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("atomic_data") / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    return str(path)


def _config(model, out, data, **training) -> dict:
    return {"model": str(model), "output_dir": str(out), "format": "tokenizer", "max_length": 256,
            "data": {"path": data, "eval_fraction": 0.2, "seed": 1},
            "training": {"max_steps": STEPS, "per_device_train_batch_size": 4, "learning_rate": 1e-3, **training}}


@pytest.fixture(scope="module")
def previous(tiny_model_dir, sft_data, tmp_path_factory) -> Path:
    """A complete SFT output from an earlier run, copied into each test that needs one."""
    from trainer.api import train

    out = tmp_path_factory.mktemp("atomic_prev") / "prev-sft"
    return train("sft", _config(tiny_model_dir, out, sft_data))


def _listing(d: Path) -> dict:
    return list_files(d, sha256=True) | {CARD_JSON: (d / CARD_JSON).read_bytes().hex()}


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name and out.name in p.name)


# ----------------------------------------------------------------------------------------------
# a training run in a subprocess, paused at a chosen point of the save and killed there
# ----------------------------------------------------------------------------------------------
CHILD = r'''
import json, os, sys, time
cfg, point, ready = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]

def pause(tag):
    if tag == point:
        with open(ready, "w") as f:
            f.write(tag)
        time.sleep(600)

import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

_model_save = PreTrainedModel.save_pretrained
def model_save(self, save_directory, *a, **k):
    result = _model_save(self, save_directory, *a, **k)
    if point == "weights":  # a torn write: the weights file half written when the kill comes
        w = os.path.join(str(save_directory), "model.safetensors")
        with open(w, "r+b") as f:
            f.truncate(os.path.getsize(w) // 2)
    pause("weights")
    return result
PreTrainedModel.save_pretrained = model_save

_tok_save = PreTrainedTokenizerBase.save_pretrained
def tok_save(self, *a, **k):
    result = _tok_save(self, *a, **k)
    pause("tokenizer")
    return result
PreTrainedTokenizerBase.save_pretrained = tok_save

if point in ("card", "swap", "swap_fallback"):
    import harness.checkpoint as hc
    import trainer.card as tc
    import trainer.output as to
    _list = hc.list_files
    def list_files(*a, **k):
        pause("card")  # README written, card not yet
        return _list(*a, **k)
    tc.list_files = list_files
    _exchange = to.rename_exchange
    def exchange(a, b):
        pause("swap")  # the staged model complete, not yet in place
        return False if point == "swap_fallback" else _exchange(a, b)
    to.rename_exchange = exchange
    _aside = to._move_aside
    def aside(a, b):
        _aside(a, b)
        pause("swap_fallback")  # no atomic exchange here: the old model moved aside, the new not yet in
    to._move_aside = aside

if point == "random":  # signal when the save starts, and stretch every step of it so a random kill lands inside
    import trainer.card as tc
    from transformers import Trainer

    def slow(fn):
        def wrapped(*a, **k):
            time.sleep(0.15)
            result = fn(*a, **k)
            time.sleep(0.15)
            return result
        return wrapped

    _save_model = Trainer.save_model
    def save_model(self, *a, **k):
        with open(ready, "w") as f:
            f.write("save")
        return _save_model(self, *a, **k)
    Trainer.save_model = save_model
    PreTrainedModel.save_pretrained = slow(PreTrainedModel.save_pretrained)
    PreTrainedTokenizerBase.save_pretrained = slow(PreTrainedTokenizerBase.save_pretrained)
    tc.write_card = slow(tc.write_card)
    os.rename, os.replace = slow(os.rename), slow(os.replace)
    try:
        import trainer.output as to
        to.rename_exchange = slow(to.rename_exchange)
    except ImportError:
        pass

from trainer.api import train
print(train("sft", cfg), flush=True)
'''


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _spawn(cfg: dict, point: str, ready: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg), point, str(ready)], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_at(cfg: dict, point: str, tmp_path: Path) -> None:
    ready = tmp_path / f"ready-{point}"
    proc = _spawn(cfg, point, ready)
    deadline = time.time() + 600
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the training child exited ({proc.returncode}) before reaching '{point}':\n"
                        + proc.stdout.read()[-3000:])
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the training child did not reach '{point}' in time")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()


@pytest.mark.parametrize("point", ["weights", "tokenizer", "card", "swap"])
def test_a_kill_mid_save_leaves_the_previous_model_untouched(point, previous, tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "demo-sft"
    shutil.copytree(previous, out)
    before = _listing(out)
    cfg = _config(tiny_model_dir, out, sft_data)
    _kill_at(cfg, point, tmp_path)
    assert out.is_dir() and _listing(out) == before, "the previous model must stay exactly as it was"
    verify_checkpoint(out)
    verify_checkpoint(out, deep=True)
    staging = staging_dir_for(out)
    assert staging.is_dir(), "the killed run's files are in the staging directory, not in the output"
    with pytest.raises(ValueError, match="incomplete checkpoint.*staging directory"):
        verify_checkpoint(staging / "model")

    # (c) the next run of the same output removes the leftover and replaces the model whole
    from trainer.api import train

    assert train("sft", cfg) == out
    verify_checkpoint(out, deep=True)
    assert not staging.exists() and _siblings(out) == []
    assert (out / CARD_JSON).read_bytes().hex() != before[CARD_JSON], "a new model, not the previous one"


def test_a_kill_during_the_first_save_leaves_no_output(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "first-sft"
    cfg = _config(tiny_model_dir, out, sft_data)
    _kill_at(cfg, "weights", tmp_path)
    assert not out.exists(), "no half-saved model where the output goes"
    with pytest.raises(ValueError, match=r"first-sft: incomplete checkpoint: a training run into it was "
                                         r"interrupted.*rerun `harness train"):
        verify_checkpoint(out)
    from trainer.api import train

    train("sft", cfg)
    verify_checkpoint(out, deep=True)
    assert _siblings(out) == []


def test_a_kill_between_the_renames_without_atomic_exchange_leaves_no_output(previous, tiny_model_dir, sft_data,
                                                                             tmp_path):
    """Where the filesystem cannot exchange two directories, the old model is moved aside first: a kill
    then leaves no output (refused with a clear message), never a mix; the rerun cleans up."""
    out = tmp_path / "fallback-sft"
    shutil.copytree(previous, out)
    cfg = _config(tiny_model_dir, out, sft_data)
    _kill_at(cfg, "swap_fallback", tmp_path)
    assert not out.exists()
    with pytest.raises(ValueError, match="incomplete checkpoint: a training run into it was interrupted"):
        verify_checkpoint(out)
    from trainer.api import train

    train("sft", cfg)
    verify_checkpoint(out, deep=True)
    assert _siblings(out) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_kill_at_a_random_time_in_the_save_never_leaves_a_mix(seed, previous, tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "random-sft"
    shutil.copytree(previous, out)
    before = _listing(out)
    cfg = _config(tiny_model_dir, out, sft_data, max_steps=4)
    ready = tmp_path / "save-started"
    proc = _spawn(cfg, "random", ready)
    deadline = time.time() + 600
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert ready.exists(), "the training child did not reach the save"
    time.sleep(random.Random(seed).uniform(0.0, 3.0))  # the stretched save takes about 2-3 s
    proc.send_signal(signal.SIGKILL)
    finished = proc.wait(timeout=60) == 0
    proc.stdout.close()
    assert out.exists() or not finished
    if out.exists():
        verify_checkpoint(out, deep=True)  # the previous model or the new one, each complete
        if _listing(out) != before:
            assert json.loads((out / CARD_JSON).read_text())["stats"]["global_steps"] == 4
    else:
        with pytest.raises(ValueError, match="interrupted"):
            verify_checkpoint(out)
    from trainer.api import train

    train("sft", cfg)
    verify_checkpoint(out, deep=True)
    assert _siblings(out) == []


# ----------------------------------------------------------------------------------------------
# (b) the checker refuses what is not a complete training output
# ----------------------------------------------------------------------------------------------
def _copy(previous: Path, tmp_path: Path, name: str = "ckpt") -> Path:
    d = tmp_path / name
    shutil.copytree(previous, d)
    verify_checkpoint(d, deep=True)
    return d


def test_weights_without_a_card_are_refused(previous, tmp_path):
    d = _copy(previous, tmp_path)
    (d / CARD_JSON).unlink()
    with pytest.raises(ValueError, match=r"ckpt: incomplete checkpoint: harness_card.json is missing.*"
                                         r"rerun `harness train"):
        verify_checkpoint(d)
    assert not is_complete(d)


def test_incomplete_or_old_cards_are_refused(previous, tmp_path):
    d = _copy(previous, tmp_path)
    card = json.loads((d / CARD_JSON).read_text())
    # a card from before atomic saves (no completeness record) may sit beside newer weights
    legacy = {k: v for k, v in card.items() if k not in ("complete", "files", "card_format")}
    (d / CARD_JSON).write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match=r"incomplete checkpoint: harness_card.json does not record a complete "
                                         r"save.*rerun `harness train sft --config"):
        verify_checkpoint(d)
    (d / CARD_JSON).write_text(json.dumps({**card, "complete": False}))
    with pytest.raises(ValueError, match="does not record a complete save"):
        verify_checkpoint(d)
    (d / CARD_JSON).write_text(json.dumps(card)[:50])
    with pytest.raises(ValueError, match="not a valid JSON object"):
        verify_checkpoint(d)


def test_missing_truncated_changed_or_extra_weights_are_refused(previous, tmp_path):
    d = _copy(previous, tmp_path, "a")
    weights = d / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 10)
    with pytest.raises(ValueError, match=r"a: incomplete checkpoint: model.safetensors has \d+ bytes, "
                                         r"harness_card.json says \d+"):
        verify_checkpoint(d)

    d = _copy(previous, tmp_path, "b")
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors is listed in harness_card.json but missing"):
        verify_checkpoint(d)

    d = _copy(previous, tmp_path, "c")
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the deep check sees it
    (d / "model.safetensors").write_bytes(bytes(data))
    verify_checkpoint(d)
    with pytest.raises(ValueError, match="does not match the sha256"):
        verify_checkpoint(d, deep=True)

    d = _copy(previous, tmp_path, "e")
    shutil.copy(d / "model.safetensors", d / "model-00002-of-00002.safetensors")
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors is not listed"):
        verify_checkpoint(d)

    d = _copy(previous, tmp_path, "f")
    (d / INCOMPLETE_MARKER).write_text("{}")
    with pytest.raises(ValueError, match="a save into it did not finish"):
        verify_checkpoint(d)


def test_plain_transformers_dirs_and_other_paths_pass(tiny_model_dir, tmp_path):
    verify_checkpoint(tiny_model_dir)            # a user checkpoint / the embedded model: no card, no marker
    verify_checkpoint(tmp_path / "not-there")    # existence is the caller's check
    verify_checkpoint("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "f.txt").write_text("x")
    verify_checkpoint(tmp_path / "f.txt")
    assert not is_complete(tiny_model_dir)


def test_a_half_saved_dir_of_the_old_in_place_trainer_is_refused(tiny_model_dir, tmp_path):
    """The old trainer saved in place: weights, tokenizer, data_report.json, then the card."""
    d = tmp_path / "old-sft"
    shutil.copytree(tiny_model_dir, d)
    (d / "data_report.json").write_text("{}")
    with pytest.raises(ValueError, match="old-sft: incomplete checkpoint: harness_card.json is missing"):
        verify_checkpoint(d)


# ----------------------------------------------------------------------------------------------
# (d) normal outputs verify, for every method; the output replaces a previous one whole
# ----------------------------------------------------------------------------------------------
def _pairs(tmp_path: Path) -> str:
    rows = [{"system": SYSTEM, "instruction": f"Say {i}.", "chosen": f"{i}, with an example: {i} cats.",
             "rejected": f"No {i}."} for i in range(10)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("method", ["sft", "dpo", "orpo", "rm"])
def test_training_outputs_verify_complete(method, tiny_model_dir, sft_data, tmp_path):
    from trainer.api import train

    data = sft_data if method == "sft" else _pairs(tmp_path)
    out = tmp_path / f"out-{method}"
    cfg = _config(tiny_model_dir, out, data, max_steps=2)
    if method == "sft":  # LoRA: the adapter is merged in the staging dir, the card lists the merged files
        cfg["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert train(method, cfg) == out
    verify_checkpoint(out, deep=True)
    assert is_complete(out)
    card = json.loads((out / CARD_JSON).read_text())
    assert card["complete"] is True and card["method"] == method
    assert set(card["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {CARD_JSON}
    assert "model.safetensors" in card["files"] and "config.json" in card["files"]
    assert not (out / INCOMPLETE_MARKER).exists() and _siblings(out) == []
    assert not any(p.name.startswith("checkpoint-") for p in out.iterdir())


def test_intermediate_checkpoints_are_staged_and_removed(previous, tiny_model_dir, sft_data, tmp_path):
    from trainer.api import train

    out = tmp_path / "ckpts"
    shutil.copytree(previous, out)
    (out / "model-00009-of-00009.safetensors").write_bytes(b"stale")  # e.g. left by the old in-place saves
    cfg = _config(tiny_model_dir, out, sft_data, save_strategy="steps", save_steps=1)
    train("sft", cfg)
    verify_checkpoint(out, deep=True)
    assert not (out / "model-00009-of-00009.safetensors").exists(), "the new output replaces the old one whole"
    assert not any(p.name.startswith("checkpoint-") for p in out.iterdir())
    assert _siblings(out) == [], "TRL's checkpoints went to the staging dir and were removed with it"


def test_a_directory_that_is_not_a_training_output_is_not_replaced(tiny_model_dir, sft_data, tmp_path):
    from trainer.api import train

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a janus-harness training output"):
        train("sft", _config(tiny_model_dir, out, sft_data, max_steps=1))
    assert (out / "notes.txt").read_text() == "keep me"


def test_training_config_cannot_move_the_checkpoints(tiny_model_dir, sft_data, tmp_path):
    from trainer.api import train

    with pytest.raises(ValueError, match="training.output_dir"):
        train("sft", _config(tiny_model_dir, tmp_path / "o", sft_data, output_dir=str(tmp_path / "x")))


# ----------------------------------------------------------------------------------------------
# harness train --skip-if-complete
# ----------------------------------------------------------------------------------------------
def test_skip_if_complete(tiny_model_dir, sft_data, tmp_path, capsys):
    import yaml

    from trainer.cli import main

    out = tmp_path / "skip-sft"
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump({**_config(tiny_model_dir, out, sft_data, max_steps=2), "method": "sft"}))
    assert main(["sft", "--config", str(path), "--skip-if-complete"]) == 0
    card = (out / CARD_JSON).read_bytes()
    capsys.readouterr()
    assert main(["sft", "--config", str(path), "--skip-if-complete"]) == 0
    printed = capsys.readouterr().out
    assert "skipping" in printed and str(out) in printed
    assert (out / CARD_JSON).read_bytes() == card, "not retrained"
    # another config (here a CLI override) trains again
    assert main(["sft", "--config", str(path), "--skip-if-complete", "--max-steps", "3"]) == 0
    assert json.loads((out / CARD_JSON).read_text())["stats"]["global_steps"] == 3
    # other data under the same path trains again
    Path(sft_data).with_name("other.jsonl").write_text(Path(sft_data).read_text() + json.dumps(_rows()[0]) + "\n")
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["path"] = str(Path(sft_data).with_name("other.jsonl"))
    cfg["training"]["max_steps"] = 3
    path.write_text(yaml.safe_dump(cfg))
    card = (out / CARD_JSON).read_bytes()
    assert main(["sft", "--config", str(path), "--skip-if-complete"]) == 0
    assert (out / CARD_JSON).read_bytes() != card
    # an incomplete output is retrained, not skipped
    data = bytearray((out / "model.safetensors").read_bytes())
    (out / "model.safetensors").write_bytes(bytes(data[:-1]))
    capsys.readouterr()
    assert main(["sft", "--config", str(path), "--skip-if-complete"]) == 0
    assert "skipping" not in capsys.readouterr().out
    verify_checkpoint(out, deep=True)


# ----------------------------------------------------------------------------------------------
# consumers in trainer/ refuse incomplete outputs; a live run's staging dir is not taken over
# ----------------------------------------------------------------------------------------------
def test_a_later_stage_and_the_reward_loader_refuse_an_incomplete_output(previous, sft_data, tmp_path):
    from trainer.api import train
    from harness.backends.reward_model import load_reward_model

    broken = _copy(previous, tmp_path, "stage1")
    (broken / CARD_JSON).unlink()
    with pytest.raises(ValueError, match="stage1: incomplete checkpoint"):
        train("sft", _config(broken, tmp_path / "stage2", sft_data, max_steps=1))
    with pytest.raises(ValueError, match="stage1: incomplete checkpoint"):
        load_reward_model(broken)
    assert not (tmp_path / "stage2").exists()


def test_a_running_trainings_staging_dir_is_left_alone(tiny_model_dir, sft_data, tmp_path):
    import socket

    from trainer.api import train

    out = tmp_path / "busy"
    staging = staging_dir_for(out)
    staging.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (staging / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                                        "method": "sft", "config_file": "configs/x.yaml"}))
        with pytest.raises(ValueError, match=rf"busy: incomplete checkpoint: training into it is still running "
                                             rf"\(pid {other.pid}\); rerun `harness train sft --config configs/x.yaml`"):
            verify_checkpoint(out)
        with pytest.raises(ValueError, match=f"another training run \\(pid {other.pid}"):
            train("sft", _config(tiny_model_dir, out, sft_data, max_steps=1))
        assert (staging / "owner.json").exists()
    finally:
        other.kill()
        other.wait()
    train("sft", _config(tiny_model_dir, out, sft_data, max_steps=1))  # its owner gone: a leftover, removed
    verify_checkpoint(out)
    assert not staging.exists()
