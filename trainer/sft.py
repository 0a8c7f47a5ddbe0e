"""Supervised fine-tuning on (system, instruction, output) rows with TRL's SFTTrainer.

Loss is on the response only: rows go to TRL as prompt/completion pairs (``completion_only_loss``).
"""
from __future__ import annotations

from pathlib import Path

from harness.formats import PromptFormat
from trainer.common import (load_causal_lm, load_tokenizer, peft_config, prepare_data, run_and_save, set_threads,
                            trl_args)
from trainer.config import TrainConfig
from trainer.data import SFT


def sft_records(rows: list[dict], fmt: PromptFormat) -> list[dict]:
    return [{"prompt": fmt.prompt(r["system"], r["instruction"]), "completion": fmt.completion(r["output"])}
            for r in rows]


def build_trainer(cfg: TrainConfig):
    """The TRL trainer plus what ``run_and_save`` needs; split out so tests can inspect the batches."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    set_threads(cfg.threads)
    tok = load_tokenizer(cfg)
    fmt = PromptFormat(cfg.format, tok)
    data = prepare_data(cfg, SFT, fmt)
    args = trl_args(SFTConfig, cfg, {"max_length": cfg.max_length, "completion_only_loss": True,
                                     "learning_rate": 5e-6, "eval_strategy": "no"})
    trainer = SFTTrainer(
        model=load_causal_lm(cfg),
        args=args,
        train_dataset=Dataset.from_list(sft_records(data.train, fmt)),
        eval_dataset=Dataset.from_list(sft_records(data.eval, fmt)) if data.eval else None,
        processing_class=tok,
        peft_config=peft_config(cfg, "CAUSAL_LM"),
    )
    return trainer, tok, data


def train_sft(cfg: TrainConfig) -> Path:
    trainer, tok, data = build_trainer(cfg)
    return run_and_save(trainer, cfg, tok, data, "sft")
