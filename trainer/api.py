"""Python API: ``train(method, config) -> Path`` (the checkpoint directory)."""
from __future__ import annotations

from pathlib import Path

from trainer.config import METHODS, TrainConfig, from_dict, load_config


def _runner(method: str):
    if method == "sft":
        from trainer.sft import train_sft as run
    elif method == "dpo":
        from trainer.dpo import train_dpo as run
    elif method == "orpo":
        from trainer.orpo import train_orpo as run
    elif method == "rm":
        from trainer.rm import train_rm as run
    else:
        raise ValueError(f"unknown training method '{method}'; known: {', '.join(METHODS)}")
    return run


def train(method: str, config: TrainConfig | dict | str | Path, overrides: dict | None = None) -> Path:
    """Train with ``method`` (sft, dpo, orpo, rm); ``config`` is a TrainConfig, a dict or a YAML path."""
    if method not in METHODS:
        raise ValueError(f"unknown training method '{method}'; known: {', '.join(METHODS)}")
    if isinstance(config, (str, Path)):
        cfg = load_config(config, method, overrides)
    elif isinstance(config, dict):
        d = dict(config)
        for key, value in (overrides or {}).items():
            target = d
            parts = key.split(".")
            for p in parts[:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = value
        cfg = from_dict(d, method)
    elif isinstance(config, TrainConfig):
        if config.method != method:
            raise ValueError(f"config is for method '{config.method}', not '{method}'")
        cfg = config
    else:
        raise TypeError("config must be a TrainConfig, a dict or a path to a YAML file")
    # before any model is built: a freshly initialised head (the reward model's) or adapter is drawn
    # from the config's seed, not from whatever the process drew before (the Trainer seeds only later)
    from transformers import set_seed

    set_seed(cfg.seed)
    return _runner(method)(cfg)
