"""Best-of-n reranking and rescoring jobs.

``harness rerank --candidates RUN_DIR_OR_FILE --reward-model RM --n 1,2,4,8,16``

1. **Pool.** The candidates of one model for one task: ``n_max`` sampled answers per instance. They live
   in ``<run>/candidates/run.sqlite`` (a run store of their own, so the pool's many samples per instance never
   reach the run's judging or aggregation). A pool is taken from a candidates file (``--candidates FILE.jsonl``),
   or from the run's own completions of the model when the run already sampled ``n_max`` of them per instance,
   or else from the candidates store, where missing samples are generated through the call layer
   with JANUS sampling (temperature 1.0, top_p 0.9, repetition penalty 1.03, 1024 new tokens), overridden by
   the run config's generation settings for the task and the model, then by the command's flags; the pool's
   generation hash leaves out n, so growing a pool from 4 to 16 keeps the first 4.
2. **Scoring.** Every candidate is scored on (system message, prompt, candidate) and stored as a ``Score``
   record (in the candidates store) as soon as its batch finishes. A stored score is reused when scorer,
   version and the scored text's hash match, so rescoring a pool with the same scorer costs nothing and a
   killed job resumes with the unscored candidates only. Scorers: a reward model directory (the harness's
   TRL RM, a JANUS-RM / OpenRLHF value-head checkpoint, any sequence classifier; batched by
   ``harness.backends.rm_batching``), ``judge`` (the run config's judge through the call layer: mean parsed value),
   or ``toxicity[:NAME]`` (minus the toxicity probability: a penalty).
3. **Selection.** For each n, the virtual model ``<model>@bo<n>[<scorer>]`` gets one ``Completion`` per
   instance in the run store: the highest-scored of samples ``0..n-1`` (ties: the lowest sample index, as
   JANUS keeps the first best). Its metadata names the selected sample and the rewards it beat, so judging,
   aggregation and reports treat it like any model and every pick can be traced.
4. **Analysis** (``reports.bestofn``): reward and oracle score against n from the one pool.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.backends.base import GenRequest
from harness.paths import check_name, safe_join
from harness.records import Completion, Instance, Score, stable_hash
from harness.store import RunStore, remove_stale_temp_files

log = logging.getLogger("harness.rerank")

#: JANUS ``utils/prompts.py`` SAMPLING_PARAMS for best-of-n candidates
JANUS_SAMPLING = {"temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.03, "max_tokens": 1024}
CANDIDATES_DIR = "candidates"


class RerankError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------
# candidates
# ----------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    instance: Instance
    completion: Completion

    @property
    def triple(self) -> tuple[str | None, str, str]:
        return self.instance.system, self.instance.turns[-1], self.completion.text


def input_hash(c: Candidate) -> str:
    """What a scorer reads: a stored score is valid only for the same text."""
    return stable_hash(list(c.triple), 24)


@dataclass
class Pool:
    """Candidates of one model for one task: instance id -> completions by sample index."""

    task: str
    model: str
    store: RunStore  # where the candidates' Score records go
    instances: dict[str, Instance]
    samples: dict[str, dict[int, Completion]] = field(default_factory=dict)

    def candidates(self, n: int | None = None) -> list[Candidate]:
        out = []
        for iid, by_index in self.samples.items():
            for s in sorted(by_index):
                if n is None or s < n:
                    out.append(Candidate(self.instances[iid], by_index[s]))
        return out


def parse_ns(text: str) -> list[int]:
    try:
        ns = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise RerankError(f"--n: expected comma-separated integers like 1,2,4,8,16, got '{text}'") from None
    if not ns or ns[0] < 1:
        raise RerankError(f"--n: every n must be >= 1, got '{text}'")
    return ns


def _check_single_turn(instances: Sequence[Instance], where: str) -> None:
    multi = [i.id for i in instances if len(i.turns) != 1]
    if multi:
        raise RerankError(f"{where}: best-of-n reranking scores single-turn answers; instances {multi[:3]} "
                          f"have {len(next(i for i in instances if i.id == multi[0]).turns)} turns")


def _select_task(store: RunStore, task: str | None, where: str) -> str:
    tasks = sorted({i.task for i in store.iter("instance")})
    if task:
        if task not in tasks:
            raise RerankError(f"{where}: no instances of task '{task}' (tasks stored: {tasks})")
        return task
    if len(tasks) != 1:
        raise RerankError(f"{where}: --task is needed (tasks stored: {tasks})")
    return tasks[0]


def pool_gen_hash(backend_model_id: str, sampling: dict) -> str:
    # n is left out on purpose: a larger pool extends a smaller one with the same settings
    return stable_hash({"pool": 1, "model_id": backend_model_id, "sampling": sampling})


def load_file_pool(path: Path, store: RunStore, task: str | None, model: str) -> tuple[str, dict[str, Instance]]:
    """Import a JSONL/JSON candidates file into ``store``.

    Rows: ``{"instance_id", "candidates": [text, ...]}`` or one candidate per row
    ``{"instance_id", "sample_index", "response"}``; ``system`` and ``prompt`` (or ``instruction``) give the
    instance when the run store does not hold it.
    """
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise RerankError(f"{path}: not valid JSON/JSONL: {e}") from None
    if isinstance(rows, dict):
        rows = [dict(v, instance_id=k) if isinstance(v, dict) else {"instance_id": k, "candidates": v}
                for k, v in rows.items()]
    task = task or "candidates"
    known = {i.id: i for i in store.iter("instance", task=task)}
    gen_hash = "file:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    comps: dict[tuple[str, int], Completion] = {}
    for n, row in enumerate(rows, 1):
        where = f"{path}: row {n}"
        if not isinstance(row, dict):
            raise RerankError(f"{where}: expected an object")
        iid = row.get("instance_id", row.get("id"))
        if iid is None:
            raise RerankError(f"{where}: field 'instance_id' is missing")
        iid = str(iid)
        if "candidates" in row:
            texts = row["candidates"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise RerankError(f"{where}: field 'candidates' must be a list of strings")
            pairs = list(enumerate(texts))
        else:
            resp = row.get("response", row.get("output"))
            if not isinstance(resp, str):
                raise RerankError(f"{where}: field 'response' (a string) or 'candidates' (a list) is missing")
            pairs = [(int(row.get("sample_index", 0)), resp)]
        if iid not in known:
            prompt = row.get("prompt", row.get("instruction"))
            if not isinstance(prompt, str):
                raise RerankError(f"{where}: instance '{iid}' is not in the run store and field 'prompt' is missing")
            known[iid] = Instance(task=task, id=iid, turns=[prompt], system=row.get("system"))
            store.put(known[iid])
        for s, t in pairs:
            comps[(iid, s)] = Completion(task=task, instance_id=iid, model=model, texts=[t], sample_index=s,
                                         instance_key=known[iid].key, backend="file", gen_config_hash=gen_hash,
                                         metadata={"source": str(path)})
    store.put_many(comps.values())
    return task, known


def collect_pool(store: RunStore, task: str, model: str, instances: dict[str, Instance],
                 gen_hash: str | None = None) -> dict[str, dict[int, Completion]]:
    samples: dict[str, dict[int, Completion]] = {}
    for c in store.iter("completion", task=task, model=model):
        if c.status != "ok" or c.instance_id not in instances or (gen_hash and c.gen_config_hash != gen_hash):
            continue
        if c.instance_key and c.instance_key != instances[c.instance_id].key:  # an older version of it
            continue
        samples.setdefault(c.instance_id, {})[c.sample_index] = c
    return samples


async def generate_pool(store: RunStore, calls, backend, task: str, model: str, instances: dict[str, Instance],
                        n_max: int, sampling: dict, seed: int | None = 0) -> str:
    """Sample the missing ``0..n_max-1`` candidates of every instance; each is stored as it arrives."""
    gen_hash = pool_gen_hash(backend.model_id, sampling)
    have = collect_pool(store, task, model, instances, gen_hash)
    todo = [(inst, s) for inst in instances.values() for s in range(n_max) if s not in have.get(inst.id, {})]
    if not todo:
        return gen_hash
    _check_single_turn([i for i, _ in todo], f"task {task}")
    reqs = []
    for inst, s in todo:
        msgs = ([{"role": "system", "content": inst.system}] if inst.system else []) + \
               [{"role": "user", "content": inst.turns[0]}]
        reqs.append(GenRequest(messages=msgs, max_tokens=int(sampling["max_tokens"]),
                               temperature=float(sampling["temperature"]), top_p=float(sampling["top_p"]),
                               repetition_penalty=sampling.get("repetition_penalty"), sample_index=s, seed=seed))

    def on_result(i: int, res) -> None:
        inst, s = todo[i]
        if res.error is not None:
            log.warning("candidate %s/%d failed: %s", inst.id, s, res.error)
            return  # not stored: a rerun asks again
        store.put(Completion(task=task, instance_id=inst.id, model=model, texts=[res.text], sample_index=s,
                             instance_key=inst.key, finish_reasons=[res.finish_reason], prompt_tokens=res.prompt_tokens,
                             completion_tokens=res.completion_tokens, latency_s=res.latency_s,
                             backend=backend.name, gen_config_hash=gen_hash,
                             metadata={"sampling": sampling}))

    log.info("sampling %d candidates (%s, n_max=%d)", len(todo), model, n_max)
    await calls.run(backend, reqs, on_result=on_result)
    return gen_hash


# ----------------------------------------------------------------------------------------------
# scorers: name, version, async score(candidates, on_batch) -> list[float | None]
# ----------------------------------------------------------------------------------------------
def _file_fingerprint(path: Path) -> str:
    """Identity of a checkpoint's content: config, tokenizer and weight files (size and first MiB)."""
    parts = []
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".model", ".txt")):
            with open(f, "rb") as fh:
                head = fh.read(1 << 20)
            parts.append([f.name, f.stat().st_size, hashlib.sha256(head).hexdigest()])
    return stable_hash(parts)


class RewardModelScorer:
    """A reward model checkpoint (``harness.backends.reward_model``) with the bucketed cross-prompt batching."""

    def __init__(self, path: str | Path, max_tokens: int | None = None, max_batch: int | None = None,
                 name: str | None = None, **load_options: Any):
        from harness.backends.rm_batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_TOKENS, BucketedScorer
        from harness.backends.reward_model import load_reward_model

        path = Path(path)
        rm = load_reward_model(path, **load_options)
        self.batcher = BucketedScorer(rm, max_tokens or DEFAULT_MAX_TOKENS, max_batch or DEFAULT_MAX_BATCH)
        self.name = name or path.name
        self.version = stable_hash({"fingerprint": _file_fingerprint(path), "kind": rm.kind,
                                    "format": rm.format.name, "max_length": rm.max_length,
                                    "normalize": getattr(rm.model, "normalize", None), "card": rm.version})
        self.scored = 0  # candidates actually run through the model (tests count it)

    async def score(self, cands: Sequence[Candidate], on_batch=None) -> list[float | None]:
        def batch_done(idx, rewards):
            self.scored += len(idx)
            if on_batch:
                on_batch(idx, rewards)

        return self.batcher.score([c.triple for c in cands], batch_done)


class ToxicityPenaltyScorer:
    """Minus the toxicity probability of the candidate (higher = less toxic): a penalty for reranking."""

    def __init__(self, which: str = "default", weight: float = 1.0):
        from harness.backends.toxicity import make_scorer

        self.tox = make_scorer(which)
        self.weight = float(weight)
        self.name = f"toxicity-{self.tox.name}"
        self.version = stable_hash({"tox": self.tox.describe(), "weight": self.weight})
        self.scored = 0

    async def score(self, cands: Sequence[Candidate], on_batch=None) -> list[float | None]:
        results = await asyncio.to_thread(self.tox.score, [c.completion.text for c in cands])
        primary = self.tox.primary
        out = [None if r is None or r.get(primary) is None else -self.weight * float(r[primary]) for r in results]
        self.scored += len(cands)
        if on_batch:
            on_batch(list(range(len(cands))), out)
        return out


class JudgeScorer:
    """A judge through the call layer: the mean of its parsed values over its calls for the candidate."""

    def __init__(self, judge, backend, calls, judge_model_name: str = "", server=None):
        self.judge, self.backend, self.calls = judge, backend, calls
        self.server = server  # a `harness serve` process started for this judge, stopped by close()
        self.name = f"judge-{judge.name}"
        self.version = stable_hash({"judge": judge.config() if hasattr(judge, "config") else judge.name,
                                    "judge_model": backend.model_id})
        self.judge_model_name = judge_model_name
        self.scored = 0

    async def score(self, cands: Sequence[Candidate], on_batch=None) -> list[float | None]:
        from harness.pipeline import Run

        jobs = [(ci, call) for ci, c in enumerate(cands) for call in self.judge.calls(c.instance, c.completion)]
        reqs = [Run._judge_request(call) for _, call in jobs]
        finals = await self.calls.run_parsed(self.backend, reqs,
                                             lambda res, i: self.judge.parse_result(res, jobs[i][1]))
        values: list[list[float]] = [[] for _ in cands]
        for (ci, _), (res, parsed, _) in zip(jobs, finals):
            if res.error is None and parsed is not None and parsed.ok and isinstance(parsed.value, (int, float)):
                values[ci].append(float(parsed.value))
        out = [sum(v) / len(v) if v else None for v in values]
        self.scored += len(cands)
        if on_batch:
            on_batch(list(range(len(cands))), out)
        return out

    def close(self) -> None:
        if self.server is not None:
            from harness.serve import stop_server_process

            stop_server_process(self.server)
            self.server = None


def make_scorer(spec: str, run_dir: Path | None = None, task: str | None = None, calls=None,
                max_tokens: int | None = None, **rm_options) -> Any:
    """``spec``: a reward model directory, ``judge`` (the run config's judge) or ``toxicity[:NAME]``."""
    if spec == "judge" or spec.startswith("judge:"):
        from harness.config import TaskConfig, load_config
        from harness.pipeline import make_backend, make_judge, start_served

        if run_dir is None or not (run_dir / "config.yaml").exists():
            raise RerankError(f"scorer '{spec}': needs a run directory with config.yaml naming a judge")
        cfg = load_config(run_dir / "config.yaml")
        if task is None:
            store = RunStore(run_dir)
            try:
                task = _select_task(store, None, str(run_dir))
            finally:
                store.close()
        tcfg = next((t for t in cfg.tasks if t.name == task), None)
        jcfg = cfg.judge_for(tcfg) if tcfg else cfg.judge
        if jcfg is None:
            raise RerankError(f"{run_dir / 'config.yaml'}: judge: no judge configured")
        if calls is None:
            raise RerankError(f"scorer '{spec}': a judge scorer needs the call layer (pass calls=CallLayer(...))")
        from harness.data import data_dir

        judge = make_judge(tcfg or TaskConfig(name=task), data_dir(cfg.data_dir), jcfg.method,
                           name=spec.partition(":")[2] or None)
        server = start_served(jcfg, run_dir / "serve.log")
        return JudgeScorer(judge, make_backend(jcfg), calls, jcfg.name, server)
    if spec == "toxicity" or spec.startswith("toxicity:"):
        return ToxicityPenaltyScorer(spec.partition(":")[2] or "default")
    path = Path(spec).expanduser()
    if not path.exists():
        raise RerankError(f"--reward-model: '{spec}' is not a model directory, 'judge' or 'toxicity[:NAME]'")
    return RewardModelScorer(path, max_tokens=max_tokens, **rm_options)


# ----------------------------------------------------------------------------------------------
# scoring with the store as cache
# ----------------------------------------------------------------------------------------------
def _score_record(c: Candidate, scorer, value: float | None) -> Score:
    comp = c.completion
    return Score(task=comp.task, instance_id=comp.instance_id, model=comp.model, scorer=scorer.name,
                 scorer_version=scorer.version, value=value, completion_key=comp.key,
                 criterion=comp.gen_config_hash, sample_index=comp.sample_index,
                 status="ok" if value is not None else "error", details={"input_hash": input_hash(c)})


def stored_scores(store: RunStore, cands: Sequence[Candidate], scorer_name: str,
                  scorer_version: str | None = None) -> dict[str, Score]:
    """completion key -> its valid stored score (same text, same scorer and version)."""
    wanted = {c.completion.key: input_hash(c) for c in cands}
    out: dict[str, Score] = {}
    for task, model in {(c.completion.task, c.completion.model) for c in cands}:
        for s in store.iter("score", task=task, model=model):
            if (s.scorer == scorer_name and (scorer_version is None or s.scorer_version == scorer_version)
                    and s.status == "ok" and wanted.get(s.completion_key) == s.details.get("input_hash")):
                out[s.completion_key] = s
    return out


async def score_candidates(store: RunStore, cands: Sequence[Candidate], scorer) -> dict[str, float | None]:
    """completion key -> score. Stored scores are reused; new ones are stored batch by batch."""
    have = stored_scores(store, cands, scorer.name, scorer.version)
    todo = [c for c in cands if c.completion.key not in have]
    log.info("scoring with %s: %d candidates, %d already scored", scorer.name, len(cands), len(have))
    out = {k: s.value for k, s in have.items()}
    if todo:
        def on_batch(idx, values):
            store.put_many([_score_record(todo[i], scorer, v) for i, v in zip(idx, values)])

        values = await scorer.score(todo, on_batch)
        for c, v in zip(todo, values):
            out[c.completion.key] = v
    return out


# ----------------------------------------------------------------------------------------------
# selection -> virtual models
# ----------------------------------------------------------------------------------------------
def virtual_model_name(model: str, n: int, scorer_label: str) -> str:
    return f"{model}@bo{n}[{scorer_label}]"


def select_best(cands_by_index: dict[int, Completion], rewards: dict[str, float | None], n: int):
    """(completion, reward, first-n rewards) of the best of samples 0..n-1; None if none is scored."""
    pool = [(s, c) for s, c in sorted(cands_by_index.items()) if s < n and rewards.get(c.key) is not None]
    if not pool:
        return None
    best = pool[0][1]
    for _, c in pool[1:]:
        if rewards[c.key] > rewards[best.key]:  # strictly greater: ties keep the lower sample index
            best = c
    return best, rewards[best.key], {s: rewards[c.key] for s, c in pool}


def write_virtual_models(target: RunStore, pool: Pool, rewards: dict[str, float | None], ns: Sequence[int],
                         scorer, scorer_label: str) -> dict[str, int]:
    """One Completion per instance for each ``<model>@bo<n>[<label>]``; returns model -> count written."""
    written: dict[str, int] = {}
    for n in ns:
        name = virtual_model_name(pool.model, n, scorer_label)
        recs = []
        for iid, by_index in sorted(pool.samples.items()):
            picked = select_best(by_index, rewards, n)
            if picked is None:
                continue
            best, reward, first_n = picked
            cands = [c for s, c in by_index.items() if s < n]
            gen_hash = stable_hash({"pool": best.gen_config_hash, "scorer": scorer.name,
                                    "scorer_version": scorer.version, "n": n})
            recs.append(Completion(
                task=best.task, instance_id=iid, model=name, texts=list(best.texts), sample_index=0,
                instance_key=best.instance_key,
                finish_reasons=list(best.finish_reasons),
                # what the answer cost: every candidate it was chosen from
                prompt_tokens=sum(c.prompt_tokens for c in cands),
                completion_tokens=sum(c.completion_tokens for c in cands),
                latency_s=sum(c.latency_s for c in cands), backend="rerank", gen_config_hash=gen_hash,
                metadata={"rerank": {"pool_model": pool.model, "n": n, "selected_sample": best.sample_index,
                                     "selected_key": best.key, "scorer": scorer.name,
                                     "scorer_version": scorer.version, "reward": reward,
                                     "rewards": {str(s): r for s, r in first_n.items()}}}))
        stale = [c.key for c in target.iter("completion", task=pool.task, model=name)
                 if c.gen_config_hash not in {r.gen_config_hash for r in recs}]
        if stale:
            raise RerankError(f"{target.path}: model '{name}' already holds completions from another pool or "
                              f"scorer version ({stale[0]}); use --label to name this reranking differently")
        target.put_many(recs)
        for gen_hash in {r.gen_config_hash for r in recs}:  # one pool: one hash; the model is current
            target.set_current_generation(pool.task, name, gen_hash)
        written[name] = len(recs)
    return written


# ----------------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------------
@dataclass
class RerankResult:
    task: str
    pool_model: str
    n_candidates: int
    scored_now: int
    virtual_models: dict[str, int]
    analysis: dict | None = None
    analysis_files: list[str] = field(default_factory=list)


def _label(scorer) -> str:
    """The default label: the scorer's name made safe as a file name (``harness.paths.check_name``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", scorer.name).lstrip(".-")[:100] or "scorer"


async def rerank(candidates: str | Path, scorer, ns: Sequence[int], task: str | None = None,
                 model: str | None = None, out: str | Path | None = None, sampling: dict | None = None,
                 backend=None, label: str | None = None, oracle=None, analysis: bool = True,
                 calls=None) -> RerankResult:
    """The Python API of ``harness rerank``. ``scorer``/``oracle``: objects from ``make_scorer`` (or any
    object with ``name``, ``version`` and ``async score(candidates, on_batch)``). ``backend``: generates
    missing candidates (default: the run config's model named ``model``)."""
    from harness.calls import CallLayer

    candidates = Path(candidates)
    if label is not None:  # it names files (bestofn/<model>__<label>.*) and models: refuse it before writing
        _check_label(label)
    if not candidates.exists():
        raise RerankError(f"--candidates: {candidates} does not exist")
    if candidates.is_dir() and not (candidates / "run.sqlite").exists():
        raise RerankError(f"--candidates: {candidates} is not a run directory (no run.sqlite)")
    ns = sorted(set(int(n) for n in ns))
    n_max = ns[-1]
    if candidates.is_dir() and out is not None and Path(out).resolve() != candidates.resolve():
        raise RerankError("--out: the @bo<n> models of a run's candidates are written into that run; "
                          "--out is for candidate files")
    run_dir = Path(out) if out else (candidates if candidates.is_dir() else None)
    if run_dir is None:
        raise RerankError("--out: a run directory is needed when --candidates is a file")
    from harness.lock import RunLock

    lock = RunLock(run_dir).acquire()  # the run's store is written: no run may write it meanwhile
    target = RunStore(run_dir)
    remove_stale_temp_files(run_dir)
    candidates_store = pool_store = RunStore(run_dir / CANDIDATES_DIR)
    own_calls = calls is None
    calls = calls or CallLayer(run_dir / "cache.sqlite")
    try:
        if candidates.is_file():
            model = model or candidates.stem
            task, instances = load_file_pool(candidates, pool_store, task, model)
            samples = collect_pool(pool_store, task, model, instances)
        else:
            if model is None:
                raise RerankError("--model: name the model whose candidates to rerank")
            task = _select_task(target, task, str(candidates))
            instances = {i.id: i for i in target.current_instances(task)}
            run_samples = collect_pool(target, task, model, instances, target.current_generation(task, model))
            if run_samples and all(len([s for s in v if s < n_max]) >= n_max for v in run_samples.values()):
                samples, pool_store = run_samples, target  # the run sampled the pool itself
            else:
                if backend is None and _config_has_model(run_dir, model):
                    backend = _config_backend(run_dir, model)  # backends load their model lazily
                if backend is not None:
                    sampling = {**JANUS_SAMPLING, **_config_sampling(run_dir, task, model), **(sampling or {})}
                    gen_hash = await generate_pool(pool_store, calls, backend, task, model, instances, n_max,
                                                   sampling, _config_seed(run_dir))
                    samples = collect_pool(pool_store, task, model, instances, gen_hash)
                else:  # a pool imported earlier, nothing to sample with
                    samples = collect_pool(pool_store, task, model, instances)
        if not samples:
            raise RerankError(f"{candidates}: no candidates of model '{model}' for task '{task}'")
        pool = Pool(task, model, pool_store, instances, samples)
        cands = pool.candidates(n_max)
        before = getattr(scorer, "scored", 0)
        rewards = await score_candidates(pool_store, cands, scorer)
        written = write_virtual_models(target, pool, rewards, ns, scorer, label or _label(scorer))
        result = RerankResult(task, model, len(cands), getattr(scorer, "scored", 0) - before, written)
        if analysis:
            from reports.bestofn import analyze, pool_table, write_analysis

            oracle_scores = await score_candidates(pool_store, cands, oracle) if oracle is not None else None
            table = pool_table(pool, rewards, oracle_scores)
            try:
                result.analysis = analyze(table, ns, meta={"task": task, "pool_model": model, "scorer": scorer.name,
                                                           "scorer_version": scorer.version,
                                                           "oracle": getattr(oracle, "name", None)})
            except ValueError as e:  # e.g. generation failures left no prompt with a full pool
                log.warning("no best-of-n analysis: %s", e)
            else:
                stem = f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', model)}__{label or _label(scorer)}"
                bestofn_dir = run_dir / "bestofn"
                for suffix in (".json", ".csv"):  # the files write_analysis writes
                    try:
                        safe_join(bestofn_dir, stem + suffix)
                    except ValueError as e:
                        raise RerankError(f"best-of-n analysis: {e}") from None
                result.analysis_files = [str(p) for p in write_analysis(result.analysis, bestofn_dir, stem)]
        return result
    finally:
        if own_calls:
            calls.close()
        candidates_store.close()
        target.close()
        lock.release()


def _check_label(label: str) -> str:
    try:
        return check_name(label, "--label")
    except ValueError as e:
        raise RerankError(str(e)) from None


def _config_backend(run_dir: Path, model: str):
    from harness.config import load_config
    from harness.pipeline import make_backend

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise RerankError(f"{run_dir}: candidates must be sampled but there is no config.yaml naming model "
                          f"'{model}' (or pass a backend)")
    cfg = load_config(cfg_path)
    for m in cfg.models:
        if m.name == model:
            return make_backend(m)
    raise RerankError(f"{cfg_path}: models: no model named '{model}' (known: {[m.name for m in cfg.models]})")


def _config_has_model(run_dir: Path, model: str) -> bool:
    import yaml

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        return False
    raw = yaml.safe_load(cfg_path.read_text()) or {}
    return any(isinstance(m, dict) and m.get("name") == model for m in raw.get("models") or [])


def _config_sampling(run_dir: Path, task: str, model: str) -> dict:
    """Sampling settings the run config sets for this task (task options) and model (its ``generation``)."""
    import yaml

    cfg_path = run_dir / "config.yaml"
    raw = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.exists() else {}
    out: dict = {}
    for t in raw.get("tasks") or []:
        if isinstance(t, dict) and t.get("name") == task:
            out.update((t.get("options") or {}).get("generation") or {})
    for m in raw.get("models") or []:
        if isinstance(m, dict) and m.get("name") == model:
            out.update(m.get("generation") or {})
    return {k: v for k, v in out.items() if k in JANUS_SAMPLING}


def _config_seed(run_dir: Path) -> int | None:
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        import yaml

        return (yaml.safe_load(cfg_path.read_text()) or {}).get("seed", 0)
    return 0


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "rerank", help="best-of-n reranking / rescoring of a candidate pool with a reward model",
        description="Sample n candidates per instance if needed, score them with a reward model (or a judge, or "
                    "a toxicity penalty), and write <model>@bo<n>[<scorer>] models into the run. Scores are "
                    "stored per candidate: rescoring with the same scorer is free, a killed job resumes.")
    p.add_argument("--candidates", required=True, help="run directory, or a JSONL/JSON file of candidates")
    p.add_argument("--reward-model", required=True,
                   help="reward model directory (TRL RM, JANUS-RM value-head, any sequence classifier), "
                        "'judge[:NAME]' (the run config's judge) or 'toxicity[:SCORER]' (penalty)")
    p.add_argument("--n", default="1,2,4,8,16", help="comma-separated n values (default 1,2,4,8,16)")
    p.add_argument("--task", help="task (default: the only task in the run)")
    p.add_argument("--model", help="model whose candidates are reranked (default for files: the file name)")
    p.add_argument("--out", help="run directory that receives the @bo<n> models (default: --candidates)")
    p.add_argument("--label", help="name inside [...] of the virtual models (default: the scorer's name)")
    p.add_argument("--oracle", help="scorer for the analysis's oracle score per candidate (e.g. 'judge')")
    p.add_argument("--scorer-batch-tokens", type=int, help="padded tokens per reward-model batch (default 16384)")
    p.add_argument("--prompt-format", help="reward model text format: janus-mistral or tokenizer")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--no-analysis", action="store_true", help="skip the best-of-n analysis files")
    p.set_defaults(fn=cmd_rerank)
    return p


def cmd_rerank(args) -> int:
    from harness.calls import CallLayer

    ns = parse_ns(args.n)
    if args.label is not None:
        _check_label(args.label)
    cand = Path(args.candidates)
    run_dir = Path(args.out) if args.out else cand
    sampling = {k: v for k, v in {"temperature": args.temperature, "top_p": args.top_p,
                                  "repetition_penalty": args.repetition_penalty,
                                  "max_tokens": args.max_tokens}.items() if v is not None}
    if not cand.exists():
        raise RerankError(f"--candidates: {cand} does not exist")
    if cand.is_dir() and not (cand / "run.sqlite").exists():
        raise RerankError(f"--candidates: {cand} is not a run directory (no run.sqlite)")
    if cand.is_file() and not args.out:
        raise RerankError("--out: a run directory is needed when --candidates is a file")
    calls = CallLayer(run_dir / "cache.sqlite")
    scorer = oracle = None
    try:
        rm_opts = {"device": args.device, "dtype": args.dtype}
        if args.prompt_format:
            rm_opts["prompt_format"] = args.prompt_format
        scorer = make_scorer(args.reward_model, run_dir, args.task, calls, args.scorer_batch_tokens, **rm_opts)
        oracle = make_scorer(args.oracle, run_dir, args.task, calls, args.scorer_batch_tokens, **rm_opts) \
            if args.oracle else None
        res = asyncio.run(rerank(cand, scorer, ns, task=args.task, model=args.model, out=args.out,
                                 sampling=sampling, label=args.label, oracle=oracle,
                                 analysis=not args.no_analysis, calls=calls))
    finally:
        for s in (scorer, oracle):
            if hasattr(s, "close"):
                s.close()  # a judge scorer may have started a local server
        calls.close()
    print(f"pool: {res.pool_model} on {res.task}: {res.n_candidates} candidates, {res.scored_now} scored now, "
          f"{res.n_candidates - res.scored_now} from stored scores")
    for name, count in res.virtual_models.items():
        print(f"  {name}: {count} completions")
    for f in res.analysis_files:
        print(f"  analysis: {f}")
    print(f"judge them with `harness judge <config> --out {run_dir}`; they appear in its leaderboard")
    return 0
