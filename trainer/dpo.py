"""Direct preference optimisation on (system, instruction, chosen, rejected) rows with TRL's DPOTrainer.

The reference model is the starting model (TRL builds it when ``ref_model`` is None). JANUS ran DPO
from an SFT checkpoint trained on a third of the data (configs/train/janus_dpo_stage1_sft.yaml).
"""
from __future__ import annotations

from pathlib import Path

from harness.formats import PromptFormat
from trainer.common import (load_causal_lm, load_tokenizer, peft_config, prepare_data, run_and_save, set_threads,
                            trl_args)
from trainer.config import TrainConfig
from trainer.data import PAIR


def pair_records(rows: list[dict], fmt: PromptFormat) -> list[dict]:
    return [{"prompt": fmt.prompt(r["system"], r["instruction"]),
             "chosen": fmt.completion(r["chosen"]),
             "rejected": fmt.completion(r["rejected"])} for r in rows]


def build_trainer(cfg: TrainConfig):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    set_threads(cfg.threads)
    tok = load_tokenizer(cfg)
    fmt = PromptFormat(cfg.format, tok)
    data = prepare_data(cfg, PAIR, fmt)
    args = trl_args(DPOConfig, cfg, {"max_length": cfg.max_length, "beta": 0.1, "learning_rate": 5e-7})
    trainer = DPOTrainer(
        model=load_causal_lm(cfg),
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(pair_records(data.train, fmt)),
        eval_dataset=Dataset.from_list(pair_records(data.eval, fmt)) if data.eval else None,
        processing_class=tok,
        peft_config=peft_config(cfg, "CAUSAL_LM"),
    )
    return trainer, tok, data


def train_dpo(cfg: TrainConfig) -> Path:
    trainer, tok, data = build_trainer(cfg)
    return run_and_save(trainer, cfg, tok, data, "dpo")
