"""Run config (YAML) -> typed objects. CLI flags override fields after loading.

Every validation error names the file and the field, e.g.
``configs/demo.yaml: models[0].backend: unknown backend 'hff'``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.registry import BACKENDS, JUDGES, TASKS, UnknownName
from harness.spec import check_generation


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    name: str
    backend: str = "hf"
    model: str = "default"  # path, hub id, or served model name
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    options: dict = field(default_factory=dict)  # backend options (batch_size, chat_template, ...)
    generation: dict = field(default_factory=dict)  # overrides of the task's generation spec
    serve: dict | None = None  # start `harness serve` for this model: {model, batch_size, workers, chat_template}
    # the system message this model answers with: None/"original" (each instance's own), "none"
    # (no system message), "generic" (the run's `generic_system`) or {text: "..."}
    system: Any = None
    # system-message ablations: one more model per entry, named "<name>@sys=<variant>"
    system_variants: list = field(default_factory=list)
    variant_of: str | None = None  # set on the models that `system_variants` expands to


    def system_message(self, own: str | None, generic: str) -> str | None:
        """The system message sent with an instance whose own message is ``own``."""
        mode = self.system
        if mode in (None, "original"):
            return own
        if mode == "none":
            return None
        if mode == "generic":
            return generic
        return mode["text"]

    def system_key(self, generic: str):
        """What the generation hash records of the system mode (None for the default)."""
        if self.system in (None, "original"):
            return None
        return {"mode": "text" if isinstance(self.system, dict) else self.system,
                "text": self.system_message(None, generic)}

    def backend_kwargs(self) -> dict:
        kw = dict(self.options)
        if self.backend == "openai":
            kw.update(base_url=self.base_url, api_key_env=self.api_key_env)
        return kw


@dataclass
class JudgeConfig(ModelConfig):
    method: str = "text"  # text | logprob


@dataclass
class TaskConfig:
    name: str
    limit: int | None = None
    judge: str | None = None  # judge kind; default: the task's own
    options: dict = field(default_factory=dict)
    judge_options: dict = field(default_factory=dict)
    # this task's judge model (each benchmark's official judge differs); default: the run's `judge`
    judge_model: "JudgeConfig | None" = None


@dataclass
class RunConfig:
    name: str = "run"
    out: str | None = None
    data_dir: str | None = None
    seed: int = 0
    models: list[ModelConfig] = field(default_factory=list)
    judge: JudgeConfig | None = None
    tasks: list[TaskConfig] = field(default_factory=list)
    calls: dict = field(default_factory=dict)
    # the message of `system: generic` model variants (the JANUS ablation's generic system message)
    generic_system: str = "You are a helpful assistant."
    # the study around the evaluation: bench/collection builds, training, best-of-n, report
    # (harness/experiment.py); `harness run` runs it as one resumable graph
    experiment: Any = None
    source: str = ""  # file it was read from

    def to_dict(self) -> dict:
        experiment = self.experiment
        self.experiment = None  # written back as it was given (below), not as dataclasses
        try:
            d = dataclasses.asdict(self)
        finally:
            self.experiment = experiment
        d.pop("source")
        if experiment is not None:
            d["experiment"] = _experiment_dict(experiment)
        # the variants are written as their base's `system_variants`, so the dict parses back the same
        d["models"] = [m for m in d["models"] if m.get("variant_of") is None]
        return d

    def judge_for(self, t: TaskConfig) -> "JudgeConfig | None":
        """The judge model of a task: its own ``judge_model``, else the run's ``judge``."""
        return t.judge_model or self.judge


def _experiment_dict(exp) -> dict:
    d = dataclasses.asdict(exp)
    return {k: v for k, v in d.items() if v}


def _build(cls, d: Any, where: str, file: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{file}: {where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{file}: {where}: unknown field(s) {unknown}; known: {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [r for r in required if r not in d]
    if missing:
        raise ConfigError(f"{file}: {where}: missing field(s) {missing}")
    return cls(**d)


def parse_config(raw: dict, file: str = "<config>") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: top level must be a mapping")
    raw = dict(raw)
    models = [_build(ModelConfig, m, f"models[{i}]", file) for i, m in enumerate(raw.pop("models", []) or [])]
    models = expand_system_variants(models, file)
    judge = raw.pop("judge", None)
    judge = _build(JudgeConfig, judge, "judge", file) if judge is not None else None
    tasks = []
    for i, t in enumerate(raw.pop("tasks", []) or []):
        if isinstance(t, str):
            t = {"name": t}
        if isinstance(t, dict) and t.get("judge_model") is not None:
            t = {**t, "judge_model": _build(JudgeConfig, t["judge_model"], f"tasks[{i}].judge_model", file)}
        tasks.append(_build(TaskConfig, t, f"tasks[{i}]", file))
    raw_experiment = raw.pop("experiment", None)
    cfg = _build(RunConfig, {**raw, "models": models, "judge": judge, "tasks": tasks, "source": file}, "top level", file)
    if raw_experiment is not None:
        from harness.experiment import check_against_run, parse_experiment

        try:
            cfg.experiment = parse_experiment(raw_experiment, file)
            check_against_run(cfg.experiment, cfg, file)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    validate(cfg)
    return cfg


SYSTEM_MODES = ("original", "none", "generic")


def _check_system(value, where: str) -> str:
    """A system mode's variant name ("none", "generic", or a {name, text} mapping's name)."""
    if value in SYSTEM_MODES:
        return value
    if isinstance(value, dict) and set(value) <= {"name", "text"} and isinstance(value.get("text"), str) \
            and value["text"].strip():
        return value.get("name", "text")
    raise ConfigError(f"{where}: expected one of {list(SYSTEM_MODES)} or {{name, text}} with a non-empty "
                      f"text, got {value!r}")


def expand_system_variants(models: list[ModelConfig], file: str) -> list[ModelConfig]:
    """Each ``system_variants`` entry becomes its own model, ``<name>@sys=<variant>``: a distinct
    model in every table, sharing the base model's weights and call cache."""
    out = []
    for i, m in enumerate(models):
        if m.system is not None:
            _check_system(m.system, f"{file}: models[{i}].system")
        if not isinstance(m.system_variants, list):
            raise ConfigError(f"{file}: models[{i}].system_variants: expected a list")
        out.append(m)
        for j, v in enumerate(m.system_variants):
            label = _check_system(v, f"{file}: models[{i}].system_variants[{j}]")
            if label == "original" and m.system in (None, "original"):
                continue  # the base entry already answers with the instances' own messages
            mode = {"text": v["text"]} if isinstance(v, dict) else v
            out.append(dataclasses.replace(m, name=f"{m.name}@sys={label}", system=mode, system_variants=[],
                                           variant_of=m.name))
    return out


def validate(cfg: RunConfig) -> None:
    """Everything checkable without loading data or models, so errors come before any file is written."""
    from harness.calls import CallSettings
    from harness.paths import check_name

    f = cfg.source or "<config>"
    _wrap(lambda: check_name(cfg.name, "name"), f)
    # models an experiment's train stages produce are checked when those stages have run
    pending = cfg.experiment.train_outputs() if cfg.experiment is not None else set()
    for i, m in enumerate(cfg.models):
        _wrap(lambda: check_name(m.name, f"models[{i}].name"), f)
        _check_name(BACKENDS, m.backend, f"{f}: models[{i}].backend")
        if str(Path(os.path.expanduser(m.model)).resolve()) not in pending:
            _check_model_path(m, f"{f}: models[{i}].model")
        _wrap(lambda: check_generation(m.generation, f"models[{i}].generation"), f)
        if not isinstance(m.options, dict):
            raise ConfigError(f"{f}: models[{i}].options: expected a mapping, got {type(m.options).__name__}")
    _wrap(lambda: CallSettings.from_dict(cfg.calls, "calls"), f)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"{f}: seed: must be an integer, got {cfg.seed!r}")
    judges = [("judge", cfg.judge)] + [(f"tasks[{i}].judge_model", t.judge_model) for i, t in enumerate(cfg.tasks)]
    for where, j in judges:
        if j is None:
            continue
        _wrap(lambda: check_name(j.name, f"{where}.name"), f)
        _check_name(BACKENDS, j.backend, f"{f}: {where}.backend")
        if j.method not in ("text", "logprob"):
            raise ConfigError(f"{f}: {where}.method: must be 'text' or 'logprob', got '{j.method}'")
        _check_model_path(j, f"{f}: {where}.model")
        if j.serve is not None:
            _check_model_path(ModelConfig(name="serve", backend="hf", model=j.serve.get("model", "default")),
                              f"{f}: {where}.serve.model")
    for i, t in enumerate(cfg.tasks):
        _check_name(TASKS, t.name, f"{f}: tasks[{i}].name")
        if t.judge:
            _check_name(JUDGES, t.judge, f"{f}: tasks[{i}].judge")
        if t.limit is not None and (not isinstance(t.limit, int) or isinstance(t.limit, bool) or t.limit < 1):
            raise ConfigError(f"{f}: tasks[{i}].limit: must be a positive integer, got {t.limit!r}")
        for field_ in ("options", "judge_options"):
            if not isinstance(getattr(t, field_), dict):
                raise ConfigError(f"{f}: tasks[{i}].{field_}: expected a mapping")
    names = [m.name for m in cfg.models]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{f}: models: duplicate model name(s) {sorted(dup)}")


def check_model_paths(cfg: RunConfig) -> None:
    """Every model path exists and is a complete checkpoint (what `validate` left to the experiment)."""
    f = cfg.source or "<config>"
    for i, m in enumerate(cfg.models):
        _check_model_path(m, f"{f}: models[{i}].model")


def _wrap(check, file: str) -> None:
    """Run a check that raises ValueError('field: why'); re-raise it naming the file."""
    try:
        check()
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{file}: {e}") from None


def _check_name(reg, name, where):
    # only the name is checked: importing an entry may need optional extras
    if name not in reg.names():
        try:
            reg.get(name)
        except UnknownName as e:
            raise ConfigError(f"{where}: {e}") from None


def _check_model_path(m: ModelConfig, where: str) -> None:
    if m.backend in ("hf", "vllm"):
        from harness.checkpoint import verify_checkpoint
        from harness.models import looks_local

        p = m.model
        if p == "default" or not looks_local(p):
            return
        try:  # first: a missing output beside a killed training run's staging dir says so
            verify_checkpoint(os.path.expanduser(p))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if not Path(os.path.expanduser(p)).exists():
            raise ConfigError(f"{where}: model path does not exist: {p}")


def apply_overrides(cfg: RunConfig, limit: int | None = None, data_dir: str | None = None) -> RunConfig:
    """CLI flags over the file: ``--limit`` caps every task's limit, ``--data-dir`` replaces the data dir."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be a positive integer, got {limit}")
    if limit:
        for t in cfg.tasks:
            t.limit = limit if t.limit is None else min(t.limit, limit)
    if data_dir:
        cfg.data_dir = data_dir
    return cfg


def run_dir(cfg: RunConfig, out: str | None = None) -> Path:
    """The run directory: ``--out``, else the config's ``out``, else ``runs/<name>``."""
    return Path(out or cfg.out or Path("runs") / cfg.name)


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: expected a config file (YAML), got a directory")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_config(raw or {}, str(path))
