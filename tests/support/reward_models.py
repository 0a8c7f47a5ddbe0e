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


def build_value_head_rm(model_dir: Path, out: Path, seed: int = 5, mean: float | None = 0.1,
                        std: float | None = 1.5) -> Path:
    """The OpenRLHF / JANUS-RM layout: the base model's weights under 'model.', a bias-free 'value_head',
    the config's architectures still the causal LM's (as OpenRLHF saves it)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(model_dir)
    base = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    state = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
    state["value_head.weight"] = torch.randn(1, config.hidden_size) * 0.1
    out.mkdir(parents=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["LlamaForCausalLM"]
    if mean is not None:
        config.mean, config.std = mean, std
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out
