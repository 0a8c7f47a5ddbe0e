"""The trainer: data validation, prompt formats, the four methods end to end on a tiny model, reward loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from trainer.data import DataConfig, DataError, prepare  # noqa: E402
from harness.formats import JANUS, PromptFormat, janus_prompt  # noqa: E402

SYSTEM = "You are a patient tutor for a user who prefers short answers with one example."


def _tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory, data_dir):
    """Real MT-Bench pairs in the collection format, cut short so the tiny tokenizer fits them."""
    from trainer.demo_data import mt_bench_rows

    rows = [r for r in mt_bench_rows(data_dir) if r["chosen"].strip() and r["rejected"].strip()
            and r["chosen"].strip() != r["rejected"].strip()][:12]
    for r in rows:
        r["chosen"], r["rejected"] = r["chosen"][:160], r["rejected"][:160]
        r["instruction"] = r["instruction"][:160]
    return _write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory, data_dir):
    from trainer.demo_data import demo_rows

    rows = demo_rows("mt_bench_sft")[:12]
    for r in rows:
        r["output"], r["instruction"] = r["output"][:200], r["instruction"][:160]
    return _write_jsonl(tmp_path_factory.mktemp("sft") / "sft.jsonl", rows)


def _config(model, out, data_path, **training):
    return {"model": str(model), "output_dir": str(out), "format": "tokenizer", "max_length": 512,
            "data": {"path": data_path, "eval_fraction": 0.2, "seed": 3},
            "training": {"max_steps": 10, "per_device_train_batch_size": 4, "learning_rate": 3e-3, **training}}


# ----------------------------------------------------------------------------------------------
# formats
# ----------------------------------------------------------------------------------------------
def test_janus_prompt_matches_janus_inference_template():
    # JANUS run_inference.py: prompt = f"{system_message}\n{content}".strip(); f"[INST] {prompt} [/INST] ",
    # then vLLM strips the prompt
    system, content = "  You value brevity.", "Name a prime.\n"
    expected = ("[INST] " + f"{system}\n{content}".strip() + " [/INST] ").strip()
    assert janus_prompt(system, content) == expected
    assert janus_prompt(None, "Hi") == "[INST] Hi [/INST]"


def test_janus_checkpoint_template_renders_the_training_prompt(tiny_model_dir):
    from harness.formats import janus_chat_template_for

    tok = _tok(tiny_model_dir)
    tok.chat_template = janus_chat_template_for(tok)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2+2?"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == janus_prompt(SYSTEM, "What is 2+2?")
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "4."}], tokenize=False)
    assert full == janus_prompt(SYSTEM, "What is 2+2?") + " 4." + tok.eos_token


def test_sft_loss_is_on_the_response_only(tiny_model_dir, sft_file, tmp_path):
    from trainer.config import from_dict
    from trainer.sft import build_trainer

    for fmt in ("janus-mistral", "tokenizer"):
        cfg = from_dict({**_config(tiny_model_dir, tmp_path / fmt, sft_file), "format": fmt}, "sft")
        trainer, tok, data = build_trainer(cfg)
        ex = trainer.train_dataset[0]
        row = data.train[0]
        ids, labels = ex["input_ids"], ex["labels"]
        masked = [i for i, lab in enumerate(labels) if lab == -100]
        trained = [t for t, lab in zip(ids, labels) if lab != -100]
        assert masked == list(range(len(masked))), "only a prefix (the prompt) is masked"
        assert tok.decode(trained).strip().startswith(row["output"].strip()[:20])
        prompt_text = tok.decode(ids[: len(masked)])
        assert row["instruction"][:30] in prompt_text and SYSTEM[:10] not in row["output"]
        assert row["system"][:30] in prompt_text, "the system message is part of the prompt"
        expected_ids, prompt_len = PromptFormat(fmt, tok).sequence_ids(row["system"], row["instruction"], row["output"])
        assert ids == expected_ids and len(masked) == prompt_len


# ----------------------------------------------------------------------------------------------
# data validation
# ----------------------------------------------------------------------------------------------
def test_bad_rows_are_counted_and_never_trained_on(tiny_model_dir, tmp_path):
    tok = _tok(tiny_model_dir)
    fmt = PromptFormat(JANUS, tok)
    good = {"system": SYSTEM, "instruction": "Name a colour.", "chosen": "Blue.", "rejected": "I refuse."}
    rows = [
        good,
        {**good, "rejected": "Blue."},                      # chosen == rejected
        {**good, "system": ""},                             # missing system message (empty)
        {k: v for k, v in good.items() if k != "system"},   # missing system message (absent)
        {**good, "chosen": "   "},                          # empty response
        {**good, "rejected": "word " * 400},                # longer than max_length
        {"input": SYSTEM + "\nName a shape.", "chosen": "A circle.", "rejected": "Red."},  # -RM release layout
        {"system": SYSTEM, "prompt": "Say hi.",             # -DPO release layout (message lists)
         "chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
         "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}]},
    ]
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    data = prepare(DataConfig(path=path, seed=1), "pair", length_of=fmt.length, max_length=128)
    assert data.report.rows_read == 8 and data.report.rows_valid == 3
    assert data.report.dropped == {"missing_system": 2, "empty_instruction": 0, "empty_response": 1,
                                   "chosen_equals_rejected": 1, "too_long": 1}
    assert data.report.dropped_examples["too_long"] == [6]
    kept = sorted((r["instruction"], r["chosen"]) for r in data.train)
    assert kept == [("Name a colour.", "Blue."), ("Name a shape.", "A circle."), ("Say hi.", "Hi!")]
    assert all(r["system"] == SYSTEM for r in data.train)
    assert data.report.sha256 and len(data.report.sha256) == 64


def test_malformed_files_get_one_clear_error(tmp_path):
    missing = _write_jsonl(tmp_path / "m.jsonl", [{"system": SYSTEM, "instruction": "x", "chosen": "a"}])
    with pytest.raises(DataError, match=r"m\.jsonl: row 1: missing field 'rejected'"):
        prepare(DataConfig(path=missing), "pair")
    truncated = tmp_path / "t.jsonl"
    truncated.write_text(json.dumps({"system": SYSTEM, "instruction": "x", "output": "y"}) + '\n{"system": "ab',
                         encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.jsonl: line 2 is not valid JSON"):
        prepare(DataConfig(path=str(truncated)), "sft")
    with pytest.raises(DataError, match="not found"):
        prepare(DataConfig(path=str(tmp_path / "nope.jsonl")), "sft")
    build = tmp_path / "collection_build"  # the collection builder's folder holds sft, preference and failures
    build.mkdir()
    _write_jsonl(build / "multifaceted_collection_sft.jsonl", [{"system": SYSTEM, "instruction": "x", "output": "y"}])
    _write_jsonl(build / "collection_failures.jsonl", [{"id": "1", "error": "bad json"}])
    with pytest.raises(DataError, match="pass the file itself"):
        prepare(DataConfig(path=str(build)), "sft")
    assert prepare(DataConfig(path=str(build / "multifaceted_collection_sft.jsonl")), "sft").report.train_rows == 1
    all_bad = _write_jsonl(tmp_path / "b.jsonl", [{"system": "", "instruction": "x", "output": "y"}])
    with pytest.raises(DataError, match="no usable training rows"):
        prepare(DataConfig(path=all_bad), "sft")


def test_split_is_seeded_and_recorded(tmp_path):
    rows = [{"system": SYSTEM, "instruction": f"q{i}", "output": f"a{i}"} for i in range(30)]
    path = _write_jsonl(tmp_path / "s.jsonl", rows)
    cfg = DataConfig(path=path, eval_fraction=0.2, seed=7, fraction=0.5)
    a, b = prepare(cfg, "sft"), prepare(cfg, "sft")
    assert [r["instruction"] for r in a.eval] == [r["instruction"] for r in b.eval]
    assert (a.report.train_rows, a.report.eval_rows) == (12, 6)
    assert not {r["instruction"] for r in a.train} & {r["instruction"] for r in a.eval}
    c = prepare(DataConfig(path=path, eval_fraction=0.2, seed=8), "sft")
    assert [r["instruction"] for r in c.eval] != [r["instruction"] for r in a.eval]


# ----------------------------------------------------------------------------------------------
# the four methods end to end
# ----------------------------------------------------------------------------------------------
def _losses_decrease(card: dict) -> bool:
    hist = card["stats"]["loss_history"]
    return len(hist) >= 5 and sum(hist[-3:]) / 3 < hist[0]


@pytest.mark.parametrize("method,fmt", [("sft", "tokenizer"), ("sft", "janus-mistral"), ("dpo", "tokenizer"),
                                        ("orpo", "janus-mistral")])
def test_policy_methods_train_reload_and_generate(method, fmt, tiny_model_dir, sft_file, pair_file, tmp_path):
    from harness.backends.base import GenRequest
    from harness.backends.hf import HFBackend
    from trainer.api import train
    from trainer.card import read_card

    data = sft_file if method == "sft" else pair_file
    out = train(method, {**_config(tiny_model_dir, tmp_path / method, data), "format": fmt})
    card = read_card(out)
    assert _losses_decrease(card), card["stats"]["loss_history"]
    assert card["prompt_format"] == fmt
    assert card["method"] == method and card["base_model"] == str(tiny_model_dir)
    assert card["stats"]["global_steps"] == 10 and card["data"]["train_rows"] + card["data"]["eval_rows"] > 0
    assert card["versions"]["trl"] and "janus-harness" in card["versions"]
    assert (out / "README.md").read_text().startswith(f"# {method.upper()} checkpoint")
    # the checkpoint is a plain model: the harness's hf backend loads it and generates
    backend = HFBackend(str(out), threads=1)
    req = GenRequest(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2+2?"}],
                     max_tokens=6)
    if fmt == "janus-mistral":  # the checkpoint's own template sends the prompt it was trained on
        assert backend.render(req) == janus_prompt(SYSTEM, "What is 2+2?")
    [res] = backend.generate_sync([req])
    assert res.error is None and res.completion_tokens > 0
    if method == "sft":
        # an independent forward pass agrees: the response loss on the training rows went down
        from trainer.data import DataConfig as DC
        from trainer.evaluate import response_loss

        rows = prepare(DC(path=data), "sft").train
        before = response_loss(str(tiny_model_dir), rows, fmt)["loss"]
        after = response_loss(str(out), rows, fmt)["loss"]
        assert after < before


def test_heldout_rows_rebuild_the_training_split(tiny_model_dir, sft_file, tmp_path):
    import yaml

    from trainer.config import load_config
    from trainer.evaluate import heldout_rows
    from trainer.sft import build_trainer

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**_config(tiny_model_dir, tmp_path / "o", sft_file), "method": "sft"}))
    rows, fmt, max_length = heldout_rows(str(path))
    _, _, data = build_trainer(load_config(path))
    assert rows == data.eval and len(rows) >= 1 and (fmt, max_length) == ("tokenizer", 512)


def test_lora_sft_is_merged_into_a_plain_checkpoint(tiny_model_dir, sft_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainer.api import train

    cfg = _config(tiny_model_dir, tmp_path / "lora", sft_file)
    cfg["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    out = train("sft", cfg)
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    q_merged = merged.model.layers[0].self_attn.q_proj.weight
    q_base = base.model.layers[0].self_attn.q_proj.weight
    assert q_merged.shape == q_base.shape and not torch.equal(q_merged, q_base)
    k_merged = merged.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(k_merged, base.model.layers[0].self_attn.k_proj.weight), "untargeted modules unchanged"


def test_training_does_not_depend_on_what_the_process_did_before(tiny_model_dir, pair_file, tmp_path):
    """The reward head is initialised at random: the config's seed decides it, not the global RNG state
    left by earlier work in the process (an experiment resumed after a kill trains its RM in a fresh
    process, where no SFT run drew from the RNG first)."""
    import torch
    from safetensors.torch import load_file

    from trainer.api import train

    weights = []
    for k, state in enumerate((1, 2)):
        torch.manual_seed(state)
        torch.rand(7)  # some earlier work
        out = train("rm", _config(tiny_model_dir, tmp_path / f"rm{k}", pair_file, max_steps=1))
        weights.append(load_file(str(out / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_reward_model_trains_and_scores_through_the_scorer(tiny_model_dir, pair_file, tmp_path):
    from trainer.api import train
    from trainer.card import read_card
    from trainer.data import read_rows
    from harness.backends.reward_model import SEQ_CLS, load_reward_model

    out = train("rm", _config(tiny_model_dir, tmp_path / "rm", pair_file))
    card = read_card(out)
    assert card["kind"] == "reward_model" and _losses_decrease(card), card["stats"]["loss_history"]
    scorer = load_reward_model(out)
    assert scorer.kind == SEQ_CLS and scorer.format.name == "tokenizer"
    rows, _ = read_rows(pair_file)
    triples = [(r["system"], r["instruction"], r["chosen"]) for r in rows[:5]]
    batched = scorer.score(triples, batch_size=3)
    single = [scorer.score_one(*t) for t in triples]
    assert batched == pytest.approx(single, abs=1e-5)
    # the reward is personalised: the system message changes the score
    other = scorer.score([("A user who wants answers in French only.", *triples[0][1:])])[0]
    assert other != pytest.approx(batched[0], abs=1e-7)
    # trained on these pairs: chosen outscores rejected on most of them
    chosen = scorer.score([(r["system"], r["instruction"], r["chosen"]) for r in rows])
    rejected = scorer.score([(r["system"], r["instruction"], r["rejected"]) for r in rows])
    assert sum(c > r for c, r in zip(chosen, rejected)) > len(rows) / 2


# ----------------------------------------------------------------------------------------------
# JANUS-RM (OpenRLHF value-head) checkpoints
# ----------------------------------------------------------------------------------------------
def _save_value_head_checkpoint(tiny_model_dir, out: Path, mean=None, std=None):
    """A tiny random model saved as OpenRLHF saves LLMForSequenceRegression: base under 'model.', value_head."""
    from transformers import AutoConfig, LlamaModel

    from support.reward_models import save_value_head_checkpoint

    torch.manual_seed(11)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    base = LlamaModel(config)
    head = torch.randn(1, config.hidden_size) * 0.5
    save_value_head_checkpoint(out, base, head, config, tiny_model_dir, mean, std)
    return base.eval(), head


def _direct_reward(base, head, tok, system, prompt, response):
    """The JANUS-RM forward pass written out: JANUS text, positions from the mask, value at the last token."""
    text = "[INST] " + f"{system}\n{prompt}".strip() + " [/INST] " + response + " " + tok.eos_token
    ids = torch.tensor([tok(text)["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1])[None]).last_hidden_state
    return float(hidden[0, -1] @ head[0])


def test_janus_rm_loader_equals_a_direct_forward_pass(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from harness.backends.reward_model import VALUE_HEAD, detect_kind, load_reward_model

    base, head = _save_value_head_checkpoint(tiny_model_dir, tmp_path / "janus_rm")
    assert detect_kind(tmp_path / "janus_rm") == VALUE_HEAD
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    items = [(SYSTEM, "What is 2+2?", "4."), (SYSTEM, "Name a colour.", "Blue, like the sea on a clear day."),
             ("Another user likes detail.", "What is 2+2?", "Two plus two equals four.")]
    scorer = load_reward_model(tmp_path / "janus_rm")
    assert scorer.format.name == JANUS
    expected = [_direct_reward(base, head, tok, *t) for t in items]
    assert scorer.score(items, batch_size=2) == pytest.approx(expected, abs=1e-4)  # left-padded batches
    assert expected[0] != pytest.approx(expected[2], abs=1e-6)


def test_janus_rm_normalises_with_mean_and_std_from_config(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from harness.backends.reward_model import load_reward_model

    base, head = _save_value_head_checkpoint(tiny_model_dir, tmp_path / "janus_rm", mean=0.25, std=2.0)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    item = (SYSTEM, "What is 2+2?", "4.")
    raw = _direct_reward(base, head, tok, *item)
    assert load_reward_model(tmp_path / "janus_rm").score([item])[0] == pytest.approx((raw - 0.25) / 2.0, abs=1e-4)
    assert load_reward_model(tmp_path / "janus_rm", normalize=False).score([item])[0] == pytest.approx(raw, abs=1e-4)


def test_not_a_reward_model_is_a_clear_error(tiny_model_dir, tmp_path):
    from harness.backends.reward_model import load_reward_model

    with pytest.raises(ValueError, match="not a reward model"):
        load_reward_model(tiny_model_dir)
    with pytest.raises(ValueError, match="does not exist"):
        load_reward_model(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def test_cli_trains_from_a_config_file_and_rejects_bad_configs(tiny_model_dir, sft_file, tmp_path, capsys):
    import argparse

    import yaml

    from trainer.cli import main, register

    cfg = _config(tiny_model_dir, tmp_path / "cli_out", sft_file, max_steps=2)
    cfg["method"] = "sft"
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["sft", "--config", str(path), "--max-steps", "3"]) == 0
    card = json.loads((tmp_path / "cli_out" / "harness_card.json").read_text())
    assert card["stats"]["global_steps"] == 3 and card["config_file"] == str(path)

    assert main(["dpo", "--config", str(path)]) == 2  # the file says sft
    assert "field 'method' is 'sft'" in capsys.readouterr().err
    bad = dict(cfg, training={"max_stepz": 3})
    path.write_text(yaml.safe_dump(bad))
    assert main(["sft", "--config", str(path)]) == 2
    assert "training.max_stepz" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(dict(cfg, model=str(tmp_path / "no_model"))))
    assert main(["sft", "--config", str(path)]) == 2
    assert "does not exist" in capsys.readouterr().err

    # the lead's `harness` parser mounts the same command
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "rm", "--config", "x.yaml", "--threads", "1"])
    assert args.train_method == "rm" and args.fn.__name__ == "run_train"
    from harness.cli import main as harness_main

    assert harness_main(["train", "sft", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_shipped_configs_parse(tmp_path, monkeypatch):
    from trainer.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "train"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        cfg = load_config(f)
        assert cfg.method in ("sft", "dpo", "orpo", "rm")
    dpo2 = load_config(root / "janus_dpo_stage2.yaml")
    assert dpo2.model.endswith("runs/train/janus-7b-66k-sft") and dpo2.training["learning_rate"] == 5e-7
    assert load_config(root / "janus_dpo_stage1_sft.yaml").output_dir.endswith("runs/train/janus-7b-66k-sft")
