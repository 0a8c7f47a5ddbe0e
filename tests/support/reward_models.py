"""Tiny reward models for tests: a sequence-classification head on the tiny random causal LM."""
from __future__ import annotations

from pathlib import Path


def build_seq_cls_rm(tiny_model_dir: Path, out: Path, seed: int = 3) -> Path:
    """A TRL-style reward model (one label) with the tiny model's config and tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    model.config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out
