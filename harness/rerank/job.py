"""``harness rerank`` as a Python call: pool -> scores -> ``@bo<n>`` models -> the pool's analysis files.

1. **Pool** (``harness.rerank.pool``): a candidates file, or samples from the pipeline's generate step.
2. **Scoring**: every candidate through ``harness.scorers.score_step``, the one scoring path: stored as
   each batch finishes, reused when scorer, version and content match (rescoring is free, a killed job
   resumes with the unscored candidates). Multi-turn candidates are scored on the whole conversation.
3. **Selection** (``harness.rerank.select``): ``<model>@bo<n>[<label>]`` completions in the run store,
   current under their own generation head, judged and aggregated like any model.
4. **Analysis**: the per-n curve from the one pool, written by the registered ``best_of_n`` report
   (``harness.registry.REPORTS``) as ``bestofn/<model>__<label>.json`` and ``.csv``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.paths import check_name, safe_join
from harness.rerank.pool import (CANDIDATES_DIR, CandidatePool, RerankError, collect_pool, load_file_pool,
                                 pool_sampling, pool_spec, sample_pool)
from harness.rerank.select import write_virtual_models
from harness.scorers import score_step
from harness.store import RunStore, remove_stale_temp_files

log = logging.getLogger("harness.rerank")


@dataclass
class RerankResult:
    task: str
    pool_model: str
    n_candidates: int
    scored_now: int
    virtual_models: dict[str, int]
    left_out: dict[str, int] = field(default_factory=dict)  # model -> instances without n scored samples
    analysis: dict | None = None
    analysis_files: list[str] = field(default_factory=list)


def label_of(scorer) -> str:
    """The default label: the scorer's name made safe as a file name (``harness.paths.check_name``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", scorer.name).lstrip(".-")[:100] or "scorer"


def check_label(label: str) -> str:
    try:
        return check_name(label, "--label")
    except ValueError as e:
        raise RerankError(str(e)) from None


def select_task(store: RunStore, task: str | None, where: str) -> str:
    tasks = sorted({i.task for i in store.iter("instance")})
    if task:
        if task not in tasks:
            raise RerankError(f"{where}: no instances of task '{task}' (tasks stored: {tasks})")
        return task
    if len(tasks) != 1:
        raise RerankError(f"{where}: --task is needed (tasks stored: {tasks})")
    return tasks[0]


def _raw_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _pool_model_config(run_dir: Path, model: str, backend):
    """(run config, the model's config): from the run's config.yaml, else a minimal one for ``backend``."""
    from harness.config import ModelConfig, RunConfig, load_config

    path = run_dir / "config.yaml"
    if path.exists():
        cfg = load_config(path)  # its models include the system-message variants (<name>@sys=...)
        mcfg = next((m for m in cfg.models if m.name == model), None)
        if mcfg is not None:
            return cfg, mcfg
    if backend is None:
        return None, None
    mcfg = ModelConfig(name=model, backend=backend.name, model=getattr(backend, "model", "") or "")
    return RunConfig(name="pool", models=[mcfg], seed=_raw_config(run_dir).get("seed", 0)), mcfg


async def rerank(candidates: str | Path, scorer, ns: Sequence[int], task: str | None = None,
                 model: str | None = None, out: str | Path | None = None, sampling: dict | None = None,
                 backend=None, label: str | None = None, oracle=None, analysis: bool = True,
                 calls=None) -> RerankResult:
    """``scorer``/``oracle``: ``harness.scorers`` objects (``make_scorer``). ``backend``: samples missing
    candidates (default: the run config's model named ``model``). ``sampling``: the command's flags."""
    from harness.calls import CallLayer
    from harness.lock import RunLock

    candidates = Path(candidates)
    if label is not None:  # it names files (bestofn/<model>__<label>.*) and models: refuse it before writing
        check_label(label)
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
    lock = RunLock(run_dir).acquire()  # the run's store is written: no run may write it meanwhile
    target = RunStore(run_dir)
    remove_stale_temp_files(run_dir)
    pool_store = RunStore(run_dir / CANDIDATES_DIR)
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
            task = select_task(target, task, str(candidates))
            instances = {i.id: i for i in target.current_instances(task)}
            cfg, mcfg = _pool_model_config(run_dir, model, backend)
            if mcfg is not None:
                tcfg = next((t for t in cfg.tasks if t.name == task), None)
                task_gen = (tcfg.options.get("generation") or {}) if tcfg else {}
                spec = pool_spec(pool_sampling(task_gen, mcfg.generation, sampling), n_max)
                gen_hash = await sample_pool(pool_store, calls, cfg, mcfg, task, list(instances.values()), spec,
                                             backend)
                samples = collect_pool(pool_store, task, model, instances, gen_hash)
            else:  # a pool imported earlier, nothing to sample with
                samples = collect_pool(pool_store, task, model, instances)
        if not samples:
            raise RerankError(f"{candidates}: no candidates of model '{model}' for task '{task}'")
        pool = CandidatePool(task, model, pool_store, instances, samples)
        cands = pool.candidates(n_max)
        rewards, new = await score_step(pool_store, scorer, cands, instances)
        written, left_out = write_virtual_models(target, pool, rewards, ns, scorer, label or label_of(scorer))
        result = RerankResult(task, model, len(cands), len(new), written, left_out)
        if analysis:
            oracle_scores = (await score_step(pool_store, oracle, cands, instances))[0] if oracle else None
            _write_analysis(result, run_dir, pool, rewards, oracle_scores, ns, scorer, oracle,
                            label or label_of(scorer))
        return result
    finally:
        if own_calls:
            calls.close()
        pool_store.close()
        target.close()
        lock.release()


def pool_table(pool: CandidatePool, rewards: dict, oracle: dict | None = None) -> dict[str, dict]:
    """instance id -> {"rewards": [...], "scores": [...] | None} in sample order; candidates without a
    reward (or, with an oracle, without an oracle score) are left out."""
    table = {}
    for iid, by_index in sorted(pool.samples.items()):
        keys = [by_index[s].key for s in sorted(by_index)]
        keys = [k for k in keys if rewards.get(k) is not None and (oracle is None or oracle.get(k) is not None)]
        table[iid] = {"rewards": [float(rewards[k]) for k in keys],
                      "scores": [float(oracle[k]) for k in keys] if oracle is not None else None}
    return table


def _write_analysis(result: RerankResult, run_dir: Path, pool: CandidatePool, rewards, oracle_scores, ns, scorer,
                    oracle, label: str) -> None:
    from harness.registry import REPORTS

    report = REPORTS.get("best_of_n")
    meta = {"task": pool.task, "pool_model": pool.model, "scorer": scorer.name, "scorer_version": scorer.version,
            "oracle": getattr(oracle, "name", None)}
    try:
        result.analysis = report.analyze(pool_table(pool, rewards, oracle_scores), ns, meta=meta)
    except ValueError as e:  # e.g. generation failures left no prompt with a full pool
        log.warning("no best-of-n analysis: %s", e)
        return
    stem = f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', pool.model)}__{label}"
    bestofn_dir = run_dir / "bestofn"
    for suffix in (".json", ".csv"):  # the files write_analysis writes
        try:
            safe_join(bestofn_dir, stem + suffix)
        except ValueError as e:
            raise RerankError(f"best-of-n analysis: {e}") from None
    result.analysis_files = [str(p) for p in report.write_analysis(result.analysis, bestofn_dir, stem)]
