"""ORPO, isolated: TRL moved ORPOTrainer to ``trl.experimental.orpo`` (no API stability promise), so this
module is the only place that imports it. If TRL moves or drops it again, only this file changes.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.formats import PromptFormat
from trainer.common import (load_causal_lm, load_tokenizer, peft_config, prepare_data, run_and_save, set_threads,
                            trl_args)
from trainer.config import TrainConfig
from trainer.data import PAIR
from trainer.dpo import pair_records

TESTED_TRL = "1.16.0"


def _orpo_classes():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    except ImportError as e:
        import trl

        raise ImportError(f"ORPO needs trl.experimental.orpo (tested with trl=={TESTED_TRL}); "
                          f"installed trl {trl.__version__} does not provide it") from e
    return ORPOConfig, ORPOTrainer


def build_trainer(cfg: TrainConfig):
    from datasets import Dataset

    ORPOConfig, ORPOTrainer = _orpo_classes()
    set_threads(cfg.threads)
    tok = load_tokenizer(cfg)
    fmt = PromptFormat(cfg.format, tok)
    data = prepare_data(cfg, PAIR, fmt)
    # ORPO's beta is the lambda weighting the odds-ratio term (JANUS: orpo_alpha 0.1)
    defaults = {"max_length": cfg.max_length, "beta": 0.1, "learning_rate": 5e-6,
                # rows longer than max_length were already dropped and counted, so nothing gets truncated
                "max_prompt_length": cfg.max_prompt_length or cfg.max_length,
                "max_completion_length": cfg.max_length}
    args = trl_args(ORPOConfig, cfg, defaults)
    trainer = ORPOTrainer(
        model=load_causal_lm(cfg),
        args=args,
        train_dataset=Dataset.from_list(pair_records(data.train, fmt)),
        eval_dataset=Dataset.from_list(pair_records(data.eval, fmt)) if data.eval else None,
        processing_class=tok,
        peft_config=peft_config(cfg, "CAUSAL_LM"),
    )
    return trainer, tok, data


def train_orpo(cfg: TrainConfig) -> Path:
    trainer, tok, data = build_trainer(cfg)
    return run_and_save(trainer, cfg, tok, data, "orpo")
