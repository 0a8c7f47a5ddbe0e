"""The candidate pool of best-of-n: ``n_max`` samples per instance of one model for one task.

Candidates live in ``<run>/candidates/run.sqlite``, a run store of their own, so the pool's many samples
per instance never reach the run's judging or aggregation. A pool is imported from a candidates file, or
sampled by the pipeline's generate step (``harness.pipeline.Run.generate``) into that store: n samples per
instance under the pool's settings, through the run's call layer and cache. The pool is samples only, never
a greedy answer: JANUS sampling (temperature 1.0, top_p 0.9, repetition penalty 1.03, 1024 new tokens),
overridden by the run config's settings for the task and the model (a greedy temperature there is the
model's evaluation setting and is left out), then by the command's flags (a greedy one is refused). The
task's own per-instance sampling (MT-Bench's category temperatures) does not apply to a pool.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.records import Completion, Instance
from harness.spec import GenerationSpec
from harness.store import RunStore

log = logging.getLogger("harness.rerank")

#: JANUS ``utils/prompts.py`` SAMPLING_PARAMS for best-of-n candidates
JANUS_SAMPLING = {"temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.03, "max_tokens": 1024}
CANDIDATES_DIR = "candidates"


class RerankError(ValueError):
    pass


@dataclass
class CandidatePool:
    """Candidates of one model for one task: instance id -> completions by sample index."""

    task: str
    model: str
    store: RunStore  # where the candidates' Score records go
    instances: dict[str, Instance]
    samples: dict[str, dict[int, Completion]] = field(default_factory=dict)

    def candidates(self, n: int | None = None) -> list[Completion]:
        return [by_index[s] for _, by_index in sorted(self.samples.items()) for s in sorted(by_index)
                if n is None or s < n]


def pool_sampling(task_generation: dict, model_generation: dict, flags: dict | None = None) -> dict:
    """The pool's sampling settings: JANUS's, then the run config's (the task's ``options.generation``,
    then the model's ``generation``; a greedy temperature there is left out), then the command's flags."""
    out = dict(JANUS_SAMPLING)
    from_config = {**(task_generation or {}), **(model_generation or {})}
    for k, v in from_config.items():
        if k not in JANUS_SAMPLING:
            continue
        if k == "temperature" and (v is None or float(v) <= 0):
            log.info("pool: the config's greedy temperature is not used for candidates (samples only)")
            continue
        out[k] = v
    for k, v in (flags or {}).items():
        if k == "temperature" and float(v) <= 0:
            raise RerankError(f"--temperature: {v} is greedy decoding; best-of-n candidates are samples "
                              "(temperature > 0)")
        out[k] = v
    return out


class PoolSpec(GenerationSpec):
    """The generate step's spec for a pool. Its identity (the generation hash in every candidate's key)
    leaves n out: a larger pool extends a smaller one with the same settings, keeping its records,
    their scores and the ``@bo<n>`` models made from them."""

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "n_samples"}


def pool_spec(sampling: dict, n_max: int) -> GenerationSpec:
    return PoolSpec(max_tokens=int(sampling["max_tokens"]), temperature=float(sampling["temperature"]),
                          top_p=float(sampling["top_p"]), repetition_penalty=sampling.get("repetition_penalty"),
                          n_samples=n_max, chat=True)


class _PoolTask:
    """The task as the generate step sees it for a pool: the pool's spec, no per-instance sampling."""

    drives_requests = False

    def __init__(self, name: str, spec: GenerationSpec):
        self.name, self._spec = name, spec

    def generation_spec(self) -> GenerationSpec:
        return replace(self._spec)


async def sample_pool(pool_store: RunStore, calls, cfg, mcfg, task: str, instances: list[Instance],
                      spec: GenerationSpec, backend=None) -> str:
    """Sample the missing candidates with the pipeline's generate step; returns the pool's generation hash.

    Each candidate is stored as it arrives; the call cache keys by request and sample index, so a grown
    pool (n_max 4 -> 16) asks only for the new samples, and a run's own answers that were sampled with
    the same settings answer from the cache."""
    from harness.config import TaskConfig
    from harness.pipeline import Run
    from harness.serve import stop_server_process

    run = Run(cfg, pool_store.dir)
    run.store.close()
    run.calls.close()
    run.store, run.calls = pool_store, calls  # the candidates store, the run's call layer and cache
    run.task = lambda tcfg: _PoolTask(task, spec)
    pool_mcfg = replace(mcfg, generation={})  # the pool's spec holds the settings already
    if backend is not None:
        run._backends[id(pool_mcfg)] = backend
    try:
        st = await run.generate(TaskConfig(name=task), pool_mcfg, instances)
    finally:
        for p in run._servers:
            stop_server_process(p)
    log.info("pool %s/%s: %d requests, %d from cache, %d failed", task, mcfg.name, st.requests, st.cached,
             st.failed)
    return pool_store.current_generation(task, mcfg.name)


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
