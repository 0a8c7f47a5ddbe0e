"""Training run configuration (YAML) -> a typed object.

```yaml
method: sft                 # sft | dpo | orpo | rm  (the CLI subcommand must agree)
model: HuggingFaceTB/SmolLM2-135M-Instruct   # a local dir or a Hub id (or a previous stage's output_dir)
output_dir: runs/train/sft-demo
format: janus-mistral       # or: tokenizer (the tokenizer's chat template)
max_length: 1024            # rows longer than this are dropped and counted, not truncated
data: {path: demo:mt_bench_sft, eval_fraction: 0.1, seed: 42}
lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}   # omit for full fine-tuning
merge_lora: true            # save merged weights so the checkpoint loads as a plain model
threads: 1                  # torch threads (oversubscribing shared cores is 20-40x slower)
training:                   # any field of the TRL config for the method (SFTConfig, DPOConfig, ...)
  learning_rate: 5.0e-6
  num_train_epochs: 1
```
Relative paths are resolved against the current directory (as TRL and axolotl do); ``${ENV}`` and ``~``
are expanded; ``org/name`` stays a Hub id unless such a local path exists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.formats import FORMATS
from trainer.data import DataConfig, DataError

METHODS = ("sft", "dpo", "orpo", "rm")


class ConfigError(ValueError):
    pass


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class TrainConfig:
    method: str
    model: str
    output_dir: str
    data: DataConfig
    format: str = "janus-mistral"
    chat_template: str | None = None  # with format "tokenizer": "chatml" or a Jinja string replacing the tokenizer's
    max_length: int = 2048
    max_prompt_length: int | None = None
    lora: LoraSettings | None = None
    merge_lora: bool = True
    threads: int | None = 1
    seed: int = 42
    dtype: str = "float32"
    trust_remote_code: bool = False
    training: dict = field(default_factory=dict)
    source: str = ""  # the config file, for the model card

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


_TOP_LEVEL = {"method", "model", "output_dir", "data", "format", "chat_template", "max_length", "max_prompt_length", "lora",
              "merge_lora", "threads", "seed", "dtype", "trust_remote_code", "training", "name", "notes"}


def _resolve_path(value: str, base: Path) -> str:
    """Expand ~ and ${VARS}; keep Hub ids and ``demo:`` names; make local paths absolute."""
    value = os.path.expandvars(os.path.expanduser(value))
    if value.startswith("demo:") or "://" in value or Path(value).is_absolute():
        return value
    local = base / value
    hub_like = len(value.split("/")) <= 2 and not value.startswith(".")
    if hub_like and not local.exists():
        return value
    return str(local.resolve())


def from_dict(d: dict, method: str | None = None, where: str = "config", base: Path | None = None) -> TrainConfig:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    unknown = sorted(set(d) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_LEVEL))}")
    file_method = d.get("method")
    if method and file_method and method != file_method:
        raise ConfigError(f"{where}: field 'method' is '{file_method}' but the command asked for '{method}'")
    method = method or file_method
    if method not in METHODS:
        raise ConfigError(f"{where}: field 'method' must be one of {', '.join(METHODS)}, got {method!r}")
    for key in ("model", "output_dir", "data"):
        if key not in d or d[key] in (None, ""):
            raise ConfigError(f"{where}: field '{key}' is required")
    base = Path.cwd() if base is None else base
    data = dict(d["data"]) if isinstance(d["data"], dict) else d["data"]
    try:
        data_cfg = DataConfig.from_dict(data, where)
    except DataError as e:
        raise ConfigError(str(e)) from None
    data_cfg.path = _resolve_path(str(data_cfg.path), base)
    if data_cfg.eval_path:
        data_cfg.eval_path = _resolve_path(str(data_cfg.eval_path), base)
    fmt = d.get("format", "janus-mistral")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: field 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    lora = d.get("lora")
    if lora is not None:
        if not isinstance(lora, dict):
            raise ConfigError(f"{where}: field 'lora' must be a mapping (or omitted for full fine-tuning)")
        bad = sorted(set(lora) - set(LoraSettings.__dataclass_fields__))
        if bad:
            raise ConfigError(f"{where}: unknown field(s) lora.{', lora.'.join(bad)}")
        lora = LoraSettings(**lora)
    training = d.get("training") or {}
    if not isinstance(training, dict):
        raise ConfigError(f"{where}: field 'training' must be a mapping")
    max_length = d.get("max_length", 2048)
    if not isinstance(max_length, int) or max_length <= 0:
        raise ConfigError(f"{where}: field 'max_length' must be a positive integer")
    return TrainConfig(
        method=method,
        model=_resolve_path(str(d["model"]), base),
        output_dir=str((base / os.path.expandvars(os.path.expanduser(str(d["output_dir"])))).resolve()),
        data=data_cfg,
        format=fmt,
        chat_template=d.get("chat_template"),
        max_length=max_length,
        max_prompt_length=d.get("max_prompt_length"),
        lora=lora,
        merge_lora=bool(d.get("merge_lora", True)),
        threads=d.get("threads", 1),
        seed=int(d.get("seed", 42)),
        dtype=str(d.get("dtype", "float32")),
        trust_remote_code=bool(d.get("trust_remote_code", False)),
        training=dict(training),
        source=where,
    )


def load_config(path: str | Path, method: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML config file; ``overrides`` (dotted keys allowed: ``training.max_steps``) win."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        target = d
        parts = key.split(".")
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = value
    return from_dict(d, method, where=str(path))
