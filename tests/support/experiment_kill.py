"""For tests/test_experiment_kill.py: the experiment's configs, its scripted backends, and the driver that runs
`harness run CONFIG` with every model call, training run and reward-model batch logged, and SIGKILLs itself at
a chosen point of the graph.

The backends are registered on import, so the driver (a fresh interpreter, with tests/ on PYTHONPATH) imports
this module too.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from harness.backends.base import Backend, GenResult
from harness.fake import ScriptedBackend
from harness.registry import BACKENDS

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "tasks" / "multifaceted" / "readme_example.json"


class OneByOneScripted(ScriptedBackend):
    """The scripted backend one request per call, two calls at a time: every call a kill point of its own,
    and a kill can cost at most two calls."""

    name = "kill-scripted"
    max_batch = 1
    default_concurrency = 2


class CollectionGen(Backend):
    """Well-formed collection-stage outputs that differ by variant (as tests/test_collection_build.py's)."""

    name = "kill-collection-gen"
    default_concurrency = 2

    async def generate(self, requests):
        from support.collection_outputs import stage_output

        return [GenResult(text=stage_output(r, lambda r, system: f"answer {r.sample_index} under [{system[:40]}]"),
                          completion_tokens=5) for r in requests]


for _cls in (OneByOneScripted, CollectionGen):
    if _cls.name not in BACKENDS.names():
        BACKENDS.register(_cls.name, _cls)


def write_configs(root: Path, data_dir: Path, tiny_model_dir: Path) -> Path:
    """Every config of the study under ``root`` (all outputs there too); returns the run config."""
    root.mkdir(parents=True, exist_ok=True)
    coll_out = root / "collection"
    bench = root / "bench.yaml"
    bench.write_text(yaml.safe_dump({"name": "b", "seed": 0, "data_dir": str(data_dir),
                                     "targets": {"mt_bench": 78, "koala": 3},
                                     "generator": {"backend": CollectionGen.name, "model": "collgen"}}))
    coll = root / "collection.yaml"
    coll.write_text(yaml.safe_dump({
        "name": "c", "seed": 1, "data_dir": str(data_dir), "bench": str(bench), "n_variants": 2,
        "out": str(coll_out), "targets": {"mt_bench": 2, "koala": 1},
        "generator": {"backend": CollectionGen.name, "model": "collgen", "generation": {"temperature": 0.7}},
        "calls": {"concurrency": 2, "parse_retries": 1}}))
    train = {"model": str(tiny_model_dir), "format": "tokenizer", "max_length": 256, "threads": 1,
             "training": {"max_steps": 3, "per_device_train_batch_size": 2, "learning_rate": 1e-3}}
    sft, rm = root / "train_sft.yaml", root / "train_rm.yaml"
    sft.write_text(yaml.safe_dump({**train, "method": "sft", "output_dir": str(root / "models" / "sft"),
                                   "data": {"path": str(coll_out / "multifaceted_collection_sft.jsonl")}}))
    rm.write_text(yaml.safe_dump({**train, "method": "rm", "output_dir": str(root / "models" / "rm"),
                                  "data": {"path": str(coll_out / "multifaceted_collection_preference.jsonl")}}))
    run = root / "study.yaml"
    run.write_text(yaml.safe_dump({
        "name": "study", "data_dir": str(data_dir), "seed": 0,
        "calls": {"concurrency": 2},
        "models": [{"name": "w", "backend": OneByOneScripted.name, "model": "writer", "system_variants": ["none"]},
                   {"name": "sft", "backend": "hf", "model": str(root / "models" / "sft"),
                    "generation": {"max_tokens": 8}}],
        "judge": {"name": "j", "backend": OneByOneScripted.name, "model": "judge"},
        "tasks": [{"name": "multifaceted_bench", "options": {"path": str(EXAMPLE)}},
                  {"name": "mt_bench", "limit": 2}],
        "experiment": {
            "jobs": 2,  # SFT and RM training side by side, each stage in a child process
            "collection": [str(coll)],
            "train": [{"method": "sft", "config": str(sft)}, {"method": "rm", "config": str(rm)}],
            "best_of": [{"task": "multifaceted_bench", "model": "w", "reward_model": str(root / "models" / "rm"),
                         "label": "rm", "n": [1, 2, 4], "max_tokens": 16}],
            "report": {"out": str(root / "report"), "baseline": "w"}}}, sort_keys=False))
    return run


# `harness run CONFIG --out DIR` logging to $KILL_LOG; argv[1]: the kill point (or "none"), argv[2]: k (which
# call / training step / reward batch of that kind), the rest: the CLI arguments.
DRIVER = r'''
import hashlib, json, os, signal, sys, threading
from pathlib import Path

from support.experiment_kill import read_log  # (importing it registers the backends)

point, k, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
LOG = open(os.environ["KILL_LOG"], "a", buffering=1)
lock = threading.Lock()
state = {"stage": None, "calls": 0}
counts = {}


def log(**ev):
    with lock:
        LOG.write(json.dumps({"pid": os.getpid(), **ev}) + "\n")
        LOG.flush()


TOP = os.getpid()  # the `harness run` a user started; stages run in forked children of it (experiment.jobs)


def die(**ev):
    """SIGKILL the whole run as a user would (its top process; the stages beside this one must die with it),
    then this stage's process."""
    log(ev="kill", point=point, **ev)
    os.kill(TOP, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def reached(kind):
    """True at the k-th event of the kind the kill point names."""
    counts[kind] = counts.get(kind, 0) + 1
    return kind == point and counts[kind] == k


import harness.cli as cli
real_main = cli.main


def main(args):  # the experiment runs each stage through cli.main (looked up at call time)
    cmd = args[0]
    if cmd == "run" and "--no-experiment" in args:
        # the first evaluation of this invocation, or the second (which judges the best-of-n models); counted
        # in the log, as each stage runs in a child process of its own
        earlier = [e for e in read_log(Path(os.environ["KILL_LOG"])) if e.get("ev") == "stage"
                   and e.get("stage") in ("evaluate", "judge-bestofn")]
        stage = "evaluate" if not earlier else "judge-bestofn"
    else:
        stage = {"bench": "collection", "train": "train"}.get(cmd, cmd)
    if cmd != "run" or "--no-experiment" in args:
        state["stage"] = stage
        log(ev="stage", stage=stage, argv=args)
    return real_main(args)


cli.main = main

import contextvars
from harness.calls import CallCache, CallLayer
real_call, real_run, real_put = CallLayer._call, CallLayer.run, CallCache.put_many
RUN = contextvars.ContextVar("run", default=0)  # which CallLayer.run invocation a call belongs to


async def run(self, backend, requests, on_result=None):
    state["runs"] = state.get("runs", 0) + 1
    token = RUN.set(state["runs"])  # its workers (tasks made inside) inherit it
    try:
        return await real_run(self, backend, requests, on_result)
    finally:
        RUN.reset(token)


def put_many(self, items):  # the commit of finished calls
    real_put(self, items)
    log(ev="commit", keys=[key for key, _, _ in items])


CallLayer.run, CallCache.put_many = run, put_many


async def _call(self, backend, reqs, stats, limiter, timeout):
    stage = state["stage"]
    if stage == "collection":
        kind = "collection"
    elif stage == "rerank":
        kind = "rerank-sampling"
    elif getattr(backend, "model", "") == "judge":
        kind = "judge" if stage == "evaluate" else "judge-bestofn"
    else:
        kind = "generate" if stage == "evaluate" else "generate-" + str(stage)
    state["calls"] += 1
    call = state["calls"]
    conc = self.settings.concurrency or getattr(backend, "default_concurrency", 1)
    for r in reqs:  # as the call layer sends them
        log(ev="call", call=call, run=RUN.get(), kind=kind, stage=stage, conc=conc, key=r.cache_key(backend.model_id),
            temperature=getattr(r, "temperature", None))
    out = await real_call(self, backend, reqs, stats, limiter, timeout)
    if reached(kind):  # answered, not yet in the cache nor the run store
        die(call=call, kind=kind)
    return out


CallLayer._call = _call

import trainer.api
real_train = trainer.api.train


def train(method, config, overrides=None):
    log(ev="train_start", method=method)
    out = real_train(method, config, overrides)
    log(ev="train_end", method=method)
    return out


trainer.api.train = train

import transformers
real_step = transformers.Trainer.training_step


def training_step(self, *a, **kw):
    method = "rm" if type(self).__name__ == "RewardTrainer" else "sft"
    counts[method + "-step"] = counts.get(method + "-step", 0) + 1
    log(ev="step", method=method, step=counts[method + "-step"])
    if point == "train-" + method and counts[method + "-step"] == k:
        die(method=method, step=k)
    return real_step(self, *a, **kw)


transformers.Trainer.training_step = training_step

import harness.backends.rm_batching as rb
rb.DEFAULT_MAX_BATCH = 1  # one candidate per reward-model batch (in every run, so scores match exactly)
real_score_ids = rb.BucketedScorer.score_ids


def score_ids(self, seqs, on_batch=None):
    def batch_done(idx, rewards):
        if on_batch is not None:
            on_batch(idx, rewards)  # the scores are stored here
        for i in idx:
            log(ev="scored", seq=hashlib.sha256(json.dumps(list(seqs[i])).encode()).hexdigest()[:16])
        if reached("reward-scoring"):
            die(rows=len(idx))
    return real_score_ids(self, seqs, batch_done)


rb.BucketedScorer.score_ids = score_ids

sys.exit(real_main(argv))
'''


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
