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

``jobs: N`` (default 1) runs up to N stages at once where the graph allows it: a bench build
beside a collection build that reads only the bench's config, training stages beside each other
unless one starts from another's output, and a reward model that the evaluation does not load
beside the evaluation (best-of-n waits for it). Each stage then runs in a forked child process (one
core each for a CPU model: torch's own threads scale worse on small models) that dies with the
experiment (``PR_SET_PDEATHSIG``); the first stage to fail stops the others. The evaluation,
best-of-n and the report write one run directory and stay one after another.
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
    jobs: int = 1  # stages that may run at once, each in a child process

    def train_outputs(self) -> set[str]:
        """Output directories the train stages will write (resolved), so config checks can wait for them."""
        out = set()
        for t in self.train:
            raw = yaml.safe_load(Path(t.config).read_text()) or {}
            if raw.get("output_dir"):
                out.add(_resolved(raw["output_dir"]))
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
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"{where}.jobs: a positive integer, got {jobs!r}")
    exp.jobs = jobs
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


@dataclass
class Stage:
    name: str
    argv: object  # the CLI arguments, or a function giving them when the stage starts
    after: list = field(default_factory=list)  # names of the stages that must end first

    def args(self) -> list[str]:
        return self.argv() if callable(self.argv) else self.argv


def evaluated_paths(cfg) -> set[str]:
    """Resolved model paths the evaluation loads: its models', its judges' and their servers'."""
    paths = set()
    judges = [j for j in [cfg.judge, *(t.judge_model for t in cfg.tasks)] if j is not None]
    for m in [*cfg.models, *judges]:
        paths |= {_resolved(m.model), _resolved((m.serve or {}).get("model"))}
    return paths - {None}


def plan(exp: Experiment, config_path: str, out_dir: Path, passthrough: list[str] | None = None,
         evaluated: set[str] | None = None) -> list[Stage]:
    """The experiment's stages in order, each with the stages it waits for. ``evaluated``: the model paths
    the evaluation loads (``evaluated_paths``); a training stage whose output is not one of them (a reward
    model used only by best-of-n) runs beside the evaluation, and the best-of-n stage waits for it. None:
    the evaluation waits for every training stage."""
    stages: list[Stage] = []
    benches = [Stage(f"bench {Path(p).stem}", ["bench", "build", "multifaceted", "--config", p]) for p in exp.bench]
    stages += benches
    collections = []
    for path in exp.collection:
        # a collection that names bench build configs needs their instruction selection only, not their output
        refs = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("bench")
        refs = refs if isinstance(refs, list) else [refs]
        configs_only = all(isinstance(r, str) and r.endswith((".yaml", ".yml")) for r in refs)
        collections.append(Stage(f"collection {Path(path).stem}", ["bench", "build", "collection", "--config", path],
                                 [] if configs_only else [b.name for b in benches]))
    stages += collections
    trained: dict[str, str] = {}  # output dir -> the stage writing it
    for t in exp.train:
        raw = yaml.safe_load(Path(t.config).read_text(encoding="utf-8")) or {}
        name = f"train {t.method} {Path(t.config).stem}"
        # a model trained from another stage's output (DPO from the SFT model) waits for it
        start = _resolved(raw.get("model"))
        after = [c.name for c in collections] + ([trained[start]] if start in trained else [])
        stages.append(Stage(name, ["train", t.method, "--config", t.config, "--skip-if-complete"], after))
        if raw.get("output_dir"):
            trained[_resolved(raw["output_dir"])] = name
    evaluate = ["run", config_path, "--out", str(out_dir), "--no-experiment", *(passthrough or [])]
    not_evaluated = set() if evaluated is None else {name for path, name in trained.items() if path not in evaluated}
    stages.append(Stage("evaluate", evaluate, [s.name for s in stages if s.name not in not_evaluated]))
    for b in exp.best_of:
        argv = ["rerank", "--candidates", str(out_dir), "--task", b.task, "--model", b.model,
                "--reward-model", b.reward_model, "--n", ",".join(str(n) for n in b.n),
                "--temperature", str(b.temperature), "--top-p", str(b.top_p),
                "--repetition-penalty", str(b.repetition_penalty)]
        argv += ["--label", _label(b)]
        if b.max_tokens:
            argv += ["--max-tokens", str(b.max_tokens)]
        if b.reward_engine != "hf":
            argv += ["--reward-engine", b.reward_engine]
        rm_stage = trained.get(_resolved(b.reward_model))
        stages.append(Stage(f"best-of-n {b.model} {b.task}", argv,
                            [stages[-1].name] + ([rm_stage] if rm_stage in not_evaluated else [])))
    if exp.best_of:
        stages.append(Stage("judge best-of-n", evaluate, [stages[-1].name]))
    if exp.report is not None:
        stages.append(Stage("report", lambda: report_argv(exp, out_dir), [stages[-1].name]))
    return stages


def report_argv(exp: Experiment, out_dir: Path) -> list[str]:
    """Built when the report starts: it adds the best-of-n tables the best-of-n stages wrote."""
    rep = ["report", str(out_dir), "--out", exp.report.get("out") or str(out_dir / "report")]
    if exp.report.get("baseline"):
        rep += ["--baseline", exp.report["baseline"]]
    for b in exp.best_of:
        csv = out_dir / "bestofn" / f"{b.model}__{_label(b)}.csv"
        if csv.exists():
            rep += ["--best-of-n", str(csv)]
    return rep


def _label(b: BestOf) -> str:
    return b.label or Path(b.reward_model).name


def _resolved(path) -> str | None:
    return str(Path(os.path.expanduser(path)).resolve()) if isinstance(path, str) else None


def run_experiment(config_path: str, out_dir: Path, cli_main, passthrough: list[str] | None = None) -> int:
    """Run every stage of the experiment in ``config_path`` through ``cli_main(argv)`` (the CLI);
    ``passthrough``: `harness run` flags for the evaluation (--limit, --data-dir, --max-cost)."""
    from harness.config import load_config

    cfg = load_config(config_path)
    exp = cfg.experiment
    stages = plan(exp, config_path, out_dir, passthrough, evaluated_paths(cfg))
    t0 = time.perf_counter()
    if exp.jobs == 1:
        times = run_in_process(stages, cli_main)
    else:
        times = run_in_children(stages, cli_main, exp.jobs)
    print("experiment stages:")
    width = max(len(n) for n in times)
    for name, secs in times.items():
        print(f"  {name:{width}s} {secs:8.1f} s")
    print(f"  {'sum':{width}s} {sum(times.values()):8.1f} s")
    print(f"  {'elapsed':{width}s} {time.perf_counter() - t0:8.1f} s")
    sys.stdout.flush()
    return 0


def _announce(stage: Stage, argv: list[str]) -> None:
    print(f"[experiment] {stage.name}: harness {' '.join(argv)}", flush=True)


def run_in_process(stages: list[Stage], cli_main) -> dict[str, float]:
    times: dict[str, float] = {}
    for st in stages:
        argv = st.args()
        _announce(st, argv)
        t0 = time.perf_counter()
        rc = cli_main(argv)
        times[st.name] = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(rc)
    return times


def run_in_children(stages: list[Stage], cli_main, jobs: int) -> dict[str, float]:
    """Up to ``jobs`` stages at once, each whose predecessors ended, each in a forked child (which inherits
    this process's state, so ``cli_main`` needs no re-import). A failing stage stops the running ones."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    todo, running, times = list(stages), {}, {}
    done: set[str] = set()
    try:
        while todo or running:
            for st in [s for s in todo if set(s.after) <= done][:max(0, jobs - len(running))]:
                todo.remove(st)
                argv = st.args()
                _announce(st, argv)
                sys.stderr.flush()
                proc = ctx.Process(target=_child, args=(cli_main, argv, os.getpid()), name=st.name)
                proc.start()
                running[proc.sentinel] = (st, proc, time.perf_counter())
            if not running:
                raise RuntimeError(f"experiment: stages wait for each other: {[s.name for s in todo]}")
            for sentinel in wait(list(running)):
                st, proc, t0 = running.pop(sentinel)
                proc.join()
                times[st.name] = time.perf_counter() - t0
                if proc.exitcode != 0:
                    print(f"[experiment] {st.name} failed (exit code {proc.exitcode})", file=sys.stderr, flush=True)
                    raise SystemExit(proc.exitcode if proc.exitcode > 0 else 128 - proc.exitcode)
                print(f"[experiment] {st.name} done in {times[st.name]:.1f} s", flush=True)
                done.add(st.name)
    finally:
        for _, proc, _ in running.values():  # a failure or an interrupt: the others stop too
            proc.terminate()
        for _, proc, _ in running.values():
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return {st.name: times[st.name] for st in stages if st.name in times}


def _child(cli_main, argv: list, parent_pid: int) -> None:
    """A stage in a forked child: it dies with the experiment (SIGKILL on the parent's death, set before
    anything else; a parent gone before that is caught by the pid check), exits with the stage's code."""
    import signal

    from harness.lifecycle import set_pdeathsig, stop_all_children

    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(137)
    try:
        rc = cli_main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        rc = 1
    stop_all_children()  # what atexit would do: os._exit below skips it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
