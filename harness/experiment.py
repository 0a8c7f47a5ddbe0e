"""A whole study in one config: the ``experiment:`` block of a run config.

``harness run CONFIG`` with an ``experiment:`` block runs, in order and each resumable by itself:

1. ``bench`` / ``collection``: ``harness bench build`` of the configs named (the call cache and
   staged outputs make a rerun cheap);
2. ``train``: each stage ``{method, config}`` (a trainer YAML); a stage whose output is complete
   and was trained with the same config and data (the card's fingerprint) is not retrained;
3. the evaluation itself (build, generate, judge, aggregate over ``models`` x ``tasks``; models
   may name the training outputs by path, and ``system_variants`` add the ablations);
4. ``best_of``: per entry, ``harness rerank`` samples a pool, scores it with the reward model and
   adds ``<model>@bo<n>[<label>]`` models; then judge and aggregate again, which judges only
   the new models;
5. ``report``: ``harness report`` over the run.

Every stage goes through the same command a user would type, so a SIGKILL anywhere costs at
most what that command loses (the calls in flight, the training run in progress), and a rerun
skips what is done. The time of each stage is printed at the end.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TRAIN_METHODS = ("sft", "dpo", "orpo", "rm")


@dataclass
class TrainStage:
    method: str
    config: str


@dataclass
class BestOf:
    task: str
    model: str
    reward_model: str
    n: list = field(default_factory=lambda: [1, 2, 4, 8])
    label: str | None = None
    # JANUS's sampling for open models (the paper's best-of-n setup)
    temperature: float = 1.0
    top_p: float = 0.9
    repetition_penalty: float = 1.03
    max_tokens: int | None = None
    reward_engine: str = "hf"  # or "vllm": the reward model on vLLM's pooling runner


@dataclass
class Experiment:
    bench: list = field(default_factory=list)  # `harness bench build multifaceted` configs
    collection: list = field(default_factory=list)  # `harness bench build collection` configs
    train: list = field(default_factory=list)
    best_of: list = field(default_factory=list)
    report: dict | None = None  # {out, baseline}

    def train_outputs(self) -> set[str]:
        """Output directories the train stages will write (resolved), so config checks can wait for them."""
        out = set()
        for t in self.train:
            raw = yaml.safe_load(Path(t.config).read_text()) or {}
            if raw.get("output_dir"):
                out.add(str(Path(os.path.expanduser(raw["output_dir"])).resolve()))
        return out


def parse_experiment(raw: dict | None, file: str) -> Experiment | None:
    """The ``experiment:`` block, checked before anything runs; errors name the field."""
    if raw is None:
        return None
    where = f"{file}: experiment"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping")
    known = {f.name for f in dataclasses.fields(Experiment)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    exp = Experiment()
    for key in ("bench", "collection"):
        for i, path in enumerate(raw.get(key) or []):
            if not isinstance(path, str) or not Path(path).is_file():
                raise ValueError(f"{where}.{key}[{i}]: {path!r} is not a file")
            getattr(exp, key).append(path)
    for i, t in enumerate(raw.get("train") or []):
        w = f"{where}.train[{i}]"
        if not isinstance(t, dict) or set(t) - {"method", "config"} or not {"method", "config"} <= set(t):
            raise ValueError(f"{w}: expected {{method, config}}, got {t!r}")
        if t["method"] not in TRAIN_METHODS:
            raise ValueError(f"{w}.method: one of {list(TRAIN_METHODS)}, got {t['method']!r}")
        if not Path(t["config"]).is_file():
            raise ValueError(f"{w}.config: {t['config']} is not a file")
        exp.train.append(TrainStage(**t))
    names = {f.name for f in dataclasses.fields(BestOf)}
    for i, b in enumerate(raw.get("best_of") or []):
        w = f"{where}.best_of[{i}]"
        if not isinstance(b, dict):
            raise ValueError(f"{w}: expected a mapping")
        bad = sorted(set(b) - names)
        missing = sorted({"task", "model", "reward_model"} - set(b))
        if bad or missing:
            raise ValueError(f"{w}: unknown field(s) {bad}, missing {missing}")
        entry = BestOf(**b)
        if entry.reward_engine not in ("hf", "vllm"):
            raise ValueError(f"{w}.reward_engine: 'hf' or 'vllm', got {entry.reward_engine!r}")
        if not entry.n or not all(isinstance(n, int) and n >= 1 for n in entry.n):
            raise ValueError(f"{w}.n: a list of positive integers, got {entry.n!r}")
        exp.best_of.append(entry)
    rep = raw.get("report")
    if rep is not None and (not isinstance(rep, dict) or set(rep) - {"out", "baseline"}):
        raise ValueError(f"{where}.report: expected {{out, baseline}}, got {rep!r}")
    exp.report = rep
    return exp


def check_against_run(exp: Experiment, cfg, where: str) -> None:
    """Names in ``best_of`` must be models and tasks of the run."""
    models = {m.name for m in cfg.models}
    tasks = {t.name for t in cfg.tasks}
    for i, b in enumerate(exp.best_of):
        if b.model not in models:
            raise ValueError(f"{where}: experiment.best_of[{i}].model: '{b.model}' is not one of the run's "
                             f"models {sorted(models)}")
        if b.task not in tasks:
            raise ValueError(f"{where}: experiment.best_of[{i}].task: '{b.task}' is not one of the run's "
                             f"tasks {sorted(tasks)}")


def run_experiment(config_path: str, out_dir: Path, cli_main, passthrough: list[str] | None = None) -> int:
    """Run every stage of the experiment in ``config_path`` through ``cli_main(argv)`` (the CLI);
    ``passthrough``: `harness run` flags for the evaluation (--limit, --data-dir, --max-cost)."""
    from harness.config import load_config

    cfg = load_config(config_path)
    exp = cfg.experiment
    times: list[tuple[str, float]] = []

    def stage(name: str, argv: list[str]) -> None:
        print(f"[experiment] {name}: harness {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = cli_main(argv)
        times.append((name, time.perf_counter() - t0))
        if rc != 0:
            raise SystemExit(rc)

    for path in exp.bench:
        stage(f"bench {Path(path).stem}", ["bench", "build", "multifaceted", "--config", path])
    for path in exp.collection:
        stage(f"collection {Path(path).stem}", ["bench", "build", "collection", "--config", path])
    for t in exp.train:
        stage(f"train {t.method} {Path(t.config).stem}", ["train", t.method, "--config", t.config,
                                                          "--skip-if-complete"])
    evaluate = ["run", config_path, "--out", str(out_dir), "--no-experiment", *(passthrough or [])]
    stage("evaluate", evaluate)
    for b in exp.best_of:
        argv = ["rerank", "--candidates", str(out_dir), "--task", b.task, "--model", b.model,
                "--reward-model", b.reward_model, "--n", ",".join(str(n) for n in b.n),
                "--temperature", str(b.temperature), "--top-p", str(b.top_p),
                "--repetition-penalty", str(b.repetition_penalty)]
        argv += ["--label", b.label or Path(b.reward_model).name]
        if b.max_tokens:
            argv += ["--max-tokens", str(b.max_tokens)]
        if b.reward_engine != "hf":
            argv += ["--reward-engine", b.reward_engine]
        stage(f"best-of-n {b.model} {b.task}", argv)
    if exp.best_of:
        stage("judge best-of-n", evaluate)
    if exp.report is not None:
        rep = ["report", str(out_dir), "--out", exp.report.get("out") or str(out_dir / "report")]
        if exp.report.get("baseline"):
            rep += ["--baseline", exp.report["baseline"]]
        for b in exp.best_of:
            label = b.label or Path(b.reward_model).name
            csv = out_dir / "bestofn" / f"{b.model}__{label}.csv"
            if csv.exists():
                rep += ["--best-of-n", str(csv)]
        stage("report", rep)
    print("experiment stages:")
    width = max(len(n) for n, _ in times)
    for name, secs in times:
        print(f"  {name:{width}s} {secs:8.1f} s")
    print(f"  {'total':{width}s} {sum(s for _, s in times):8.1f} s")
    sys.stdout.flush()
    return 0
