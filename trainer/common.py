"""Pieces every training method shares: threads, tokenizer, TRL arguments, LoRA, saving."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from harness.backends.reward_model import torch_dtype
from harness.checkpoint import staging_dir_for, verify_checkpoint
from harness.formats import JANUS, NAMED_CHAT_TEMPLATES, PromptFormat, janus_chat_template_for
from trainer.config import TrainConfig
from trainer.data import PreparedData, prepare

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


def quiet_progress() -> None:
    """One line per logged step is enough; per-map progress bars only bury the data report."""
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def check_model_path(model: str) -> None:
    """A local-looking model path that does not exist gets one clear error (not a Hub lookup); a previous
    stage's output that did not finish saving is refused (``harness.checkpoint.verify_checkpoint``)."""
    looks_local = model.startswith((".", "/", "~")) or len(model.split("/")) > 2
    if looks_local and not Path(model).exists():
        verify_checkpoint(model)  # names an interrupted training run into that path, if there was one
        raise ValueError(f"model path {model} does not exist")
    verify_checkpoint(model)


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    quiet_progress()
    check_model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        # Mistral/Llama ship no pad token. Prefer UNK: a reward head reads the last non-pad token, and with
        # pad == EOS it would skip the EOS the text ends on. Padding is masked out either way.
        tok.pad_token = tok.unk_token if tok.unk_token and tok.unk_token != tok.eos_token else tok.eos_token
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
    if "output_dir" in cfg.training:
        raise ValueError(f"{cfg.source}: training.output_dir is not allowed: set the top-level output_dir; "
                         "TRL's checkpoints go to a staging directory beside it, removed when the model is saved")
    # TRL writes (intermediate checkpoints) only into the staging dir beside the output: see trainer/output.py
    kwargs = {**BASE_ARGS, **method_defaults, "output_dir": str(staging_dir_for(cfg.output_dir)), "seed": cfg.seed}
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


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def merge_adapter(out: Path, cfg: TrainConfig, method: str) -> None:
    """Fold a saved LoRA adapter into its base model, so the checkpoint is a plain model the harness loads.

    Done from the saved files on one process (not from the live, possibly sharded, training model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if method == "rm":
        base = AutoModelForSequenceClassification.from_pretrained(cfg.model, num_labels=1, dtype=torch_dtype(cfg.dtype),
                                                                  trust_remote_code=cfg.trust_remote_code)
    else:
        base = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch_dtype(cfg.dtype),
                                                    trust_remote_code=cfg.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
    for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"):
        (out / name).unlink(missing_ok=True)
    merged.save_pretrained(out)


def _barrier(trainer) -> None:
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def run_and_save(trainer, cfg: TrainConfig, tok, data: PreparedData, method: str, extra: dict | None = None,
                 save_tokenizer_template: bool = True) -> Path:
    """Train, save the checkpoint (merged if LoRA), the data report and the model card, atomically.

    Every method saves through here: the model is assembled in the staging dir beside ``cfg.output_dir``,
    the card goes in last, and only then is the directory put in place (``trainer/output.py``)."""
    from trainer import output

    out = Path(cfg.output_dir)
    main = trainer.is_world_process_zero()
    staging = staging_dir_for(out)
    fingerprint = None
    if main:
        staging = output.claim(cfg)
        fingerprint = output.config_fingerprint(cfg)
    _barrier(trainer)
    try:
        stage = _train_and_save(trainer, cfg, tok, data, method, extra, save_tokenizer_template, staging,
                                fingerprint, main)
        if not main:
            return out
        output.publish(stage, out)
    except BaseException:
        if main and staging.exists():
            print(f"[train] training failed; removing {staging}", file=sys.stderr, flush=True)
            shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"[train] saved to {out}", flush=True)
    return out


def _train_and_save(trainer, cfg: TrainConfig, tok, data: PreparedData, method: str, extra: dict | None,
                    save_tokenizer_template: bool, staging: Path, fingerprint: str | None, main: bool) -> Path:
    """Train and write the complete model into ``<staging>/model``; return that directory."""
    from trainer import output
    from trainer.card import write_card

    started = time.time()
    result = trainer.train()
    seconds = time.time() - started
    stage = output.begin_model(cfg, staging) if main else staging / "model"
    _barrier(trainer)
    # save_model gathers DeepSpeed ZeRO-3 / FSDP shards; with LoRA it writes the adapter only
    trainer.save_model(str(stage))
    _barrier(trainer)
    eval_metrics = {}
    if data.eval and trainer.eval_dataset is not None:
        eval_metrics = {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))}
    if not main:
        return stage
    peft = _is_peft(trainer.model)
    if peft and cfg.merge_lora:
        merge_adapter(stage, cfg, method)
    if method == "rm":
        # the head reads the last non-pad token: the saved config must know the pad id used in training
        config_path = stage / "config.json"
        config = json.loads(config_path.read_text())
        if config.get("pad_token_id") is None:
            config["pad_token_id"] = tok.pad_token_id
            config_path.write_text(json.dumps(config, indent=2))
    if cfg.format == JANUS and save_tokenizer_template:
        # the checkpoint carries the format it was trained on, so apply_chat_template reproduces it
        tok.chat_template = janus_chat_template_for(tok)
    tok.save_pretrained(stage)
    # the card records the arguments as JSON; keep the checkpoint free of pickles
    (stage / "training_args.bin").unlink(missing_ok=True)
    (stage / "data_report.json").write_text(json.dumps(data.report.to_dict(), indent=2), encoding="utf-8")
    losses = loss_history(trainer)
    stats = {
        "global_steps": int(trainer.state.global_step),
        "train_seconds": round(seconds, 2),
        "train_loss": float(result.training_loss) if result.training_loss is not None else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "loss_history": losses,
        "eval": eval_metrics,
        "adapter_only": bool(peft and not cfg.merge_lora),
        **(extra or {}),
    }
    write_card(stage, cfg, data.report, stats, method, fingerprint)  # last: it lists the files above
    print(f"[train] {method}: {stats['global_steps']} steps in {seconds:.1f}s, loss "
          f"{stats['first_loss']} -> {stats['final_loss']}", flush=True)
    return stage
