"""Pieces every training method shares: threads, tokenizer, TRL arguments, LoRA, saving."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from trainer.config import TrainConfig
from trainer.data import PreparedData, prepare
from trainer.formats import JANUS, NAMED_CHAT_TEMPLATES, PromptFormat, janus_chat_template_for

# Our defaults for every run; a config's ``training:`` section overrides them.
BASE_ARGS = {
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 1,
    "logging_first_step": True,
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}


def set_threads(n: int | None) -> None:
    """Pin torch threads: on shared cores, more threads than free cores is many times slower."""
    if n:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(n)
        os.environ["MKL_NUM_THREADS"] = str(n)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        torch.set_num_threads(int(n))


def torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name!r}") from None


def check_model_path(model: str) -> None:
    """A local-looking model path that does not exist gets one clear error (not a Hub lookup)."""
    looks_local = model.startswith((".", "/", "~")) or len(model.split("/")) > 2
    if looks_local and not Path(model).exists():
        raise ValueError(f"model path {model} does not exist")


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    check_model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        # Mistral/Llama ship no pad token; padding is masked out, so EOS is a safe stand-in
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if cfg.chat_template:
        tok.chat_template = NAMED_CHAT_TEMPLATES.get(cfg.chat_template, cfg.chat_template)
    return tok


def prepare_data(cfg: TrainConfig, kind: str, fmt: PromptFormat) -> PreparedData:
    data = prepare(cfg.data, kind, length_of=fmt.length, max_length=cfg.max_length)
    print(f"[train] data: {data.report.summary()}", flush=True)
    return data


def trl_args(config_cls, cfg: TrainConfig, method_defaults: dict):
    """Build the TRL config: our defaults < method defaults < the config's ``training:`` section."""
    import torch

    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg.training) - fields)
    if unknown:
        raise ValueError(f"{cfg.source}: unknown field(s) training.{', training.'.join(unknown)} "
                         f"for {config_cls.__name__}")
    kwargs = {**BASE_ARGS, **method_defaults, "output_dir": cfg.output_dir, "seed": cfg.seed}
    if not torch.cuda.is_available():
        kwargs["use_cpu"] = True
    if cfg.dtype == "bfloat16":
        kwargs["bf16"] = True
    kwargs.update(cfg.training)
    return config_cls(**{k: v for k, v in kwargs.items() if k in fields})


def peft_config(cfg: TrainConfig, task_type: str):
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type=task_type)


def load_causal_lm(cfg: TrainConfig):
    from transformers import AutoModelForCausalLM

    check_model_path(cfg.model)
    return AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch_dtype(cfg.dtype),
                                                trust_remote_code=cfg.trust_remote_code)


def loss_history(trainer, key: str = "loss") -> list[float]:
    return [float(e[key]) for e in trainer.state.log_history if key in e]


def _unwrap_for_save(model, merge: bool):
    """LoRA: merge the adapter so the checkpoint is a plain model the harness loads directly."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return model, False
    if isinstance(model, PeftModel):
        if merge:
            return model.merge_and_unload(), False
        return model, True
    return model, False


def run_and_save(trainer, cfg: TrainConfig, tok, data: PreparedData, method: str, extra: dict | None = None,
                 save_tokenizer_template: bool = True) -> Path:
    """Train, save the checkpoint (merged if LoRA), the data report and the model card."""
    from trainer.card import write_card

    started = time.time()
    result = trainer.train()
    seconds = time.time() - started
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, adapter_only = _unwrap_for_save(trainer.model, cfg.merge_lora)
    model.save_pretrained(out)
    if cfg.format == JANUS and save_tokenizer_template:
        # the checkpoint carries the format it was trained on, so apply_chat_template reproduces it
        tok.chat_template = janus_chat_template_for(tok)
    tok.save_pretrained(out)
    (out / "data_report.json").write_text(json.dumps(data.report.to_dict(), indent=2), encoding="utf-8")
    losses = loss_history(trainer)
    eval_metrics = {}
    if data.eval and trainer.eval_dataset is not None:
        eval_metrics = {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))}
    stats = {
        "global_steps": int(trainer.state.global_step),
        "train_seconds": round(seconds, 2),
        "train_loss": float(result.training_loss) if result.training_loss is not None else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "loss_history": losses,
        "eval": eval_metrics,
        "adapter_only": adapter_only,
        **(extra or {}),
    }
    write_card(out, cfg, data.report, stats, method)
    print(f"[train] {method}: {stats['global_steps']} steps in {seconds:.1f}s, loss "
          f"{stats['first_loss']} -> {stats['final_loss']}; saved to {out}", flush=True)
    return out
