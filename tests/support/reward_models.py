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


def save_value_head_checkpoint(out: Path, base, head, config, tokenizer_dir: Path, mean: float | None = None,
                               std: float | None = None) -> Path:
    """The OpenRLHF / JANUS-RM layout: ``base``'s weights under 'model.', ``head`` as the bias-free
    'value_head', the config's architectures still the causal LM's (as OpenRLHF saves it)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    state = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
    state["value_head.weight"] = head
    out.mkdir(parents=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["LlamaForCausalLM"]
    if mean is not None:
        config.mean, config.std = mean, std
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def build_value_head_rm(model_dir: Path, out: Path, seed: int = 5, mean: float | None = 0.1,
                        std: float | None = 1.5) -> Path:
    """A value-head reward model over ``model_dir``'s trained base weights and a random head."""
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(model_dir)
    base = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    head = torch.randn(1, config.hidden_size) * 0.1
    return save_value_head_checkpoint(out, base, head, config, model_dir, mean, std)
