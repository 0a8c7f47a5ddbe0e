"""A personalised reward model with TRL's RewardTrainer.

The model reads the system message: each side of a pair is tokenised exactly as the scorer in
``harness.backends.reward_model`` tokenises at inference (``PromptFormat.reward_ids``), so training and
best-of-n scoring see the same text. The head is ``AutoModelForSequenceClassification`` with one label,
read at the last non-pad token.
"""
from __future__ import annotations

from pathlib import Path

from harness.formats import PromptFormat
from trainer.common import (check_model_path, load_tokenizer, peft_config, run_and_save, set_threads,
                            torch_dtype, trl_args)
from trainer.config import TrainConfig
from trainer.data import PAIR, prepare


def reward_records(rows: list[dict], fmt: PromptFormat, max_length: int) -> list[dict]:
    return [{"chosen_ids": fmt.reward_ids(r["system"], r["instruction"], r["chosen"], max_length),
             "rejected_ids": fmt.reward_ids(r["system"], r["instruction"], r["rejected"], max_length)}
            for r in rows]


def load_sequence_classifier(cfg: TrainConfig, tok):
    from transformers import AutoModelForSequenceClassification

    check_model_path(cfg.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model, num_labels=1, dtype=torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code)
    model.config.pad_token_id = tok.pad_token_id
    return model


def build_trainer(cfg: TrainConfig):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    set_threads(cfg.threads)
    tok = load_tokenizer(cfg)
    fmt = PromptFormat(cfg.format, tok)
    data = prepare(cfg.data, PAIR, length_of=lambda s, i, r: len(fmt.reward_ids(s, i, r)),
                   max_length=cfg.max_length)
    print(f"[train] data: {data.report.summary()}", flush=True)
    args = trl_args(RewardConfig, cfg, {"max_length": cfg.max_length, "learning_rate": 9e-6})
    trainer = RewardTrainer(
        model=load_sequence_classifier(cfg, tok),
        args=args,
        train_dataset=Dataset.from_list(reward_records(data.train, fmt, cfg.max_length)),
        eval_dataset=Dataset.from_list(reward_records(data.eval, fmt, cfg.max_length)) if data.eval else None,
        processing_class=tok,
        peft_config=peft_config(cfg, "SEQ_CLS"),
    )
    return trainer, tok, data


def train_rm(cfg: TrainConfig) -> Path:
    trainer, tok, data = build_trainer(cfg)
    # the RM keeps the tokenizer's own template; its text format is recorded in the card
    return run_and_save(trainer, cfg, tok, data, "rm", save_tokenizer_template=False)
