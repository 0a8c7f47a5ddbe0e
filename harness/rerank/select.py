"""Selection: for each n, the virtual model ``<model>@bo<n>[<label>]`` gets one completion per instance.

``@bo<n>`` is the highest-reward of samples ``0..n-1`` (ties: the lowest sample index, as JANUS keeps the
first best): one draw of the best-of-n policy, since the pool's samples are independent draws. The
analysis curve (``reports.bestofn``) estimates the same quantity from the whole pool of ``N = n_max``
samples: the exact expectation over all ``C(N, n)`` subsets of size n, with the same tie rule. At n=1 the
curve is the mean over the pool's samples, what ``@bo1`` (one sample) is an unbiased draw of; at n=N both
are the best of the whole pool. An instance without n scored samples gets no ``@bo<n>`` completion (the
curve drops prompts without ``n_max`` scored candidates): a best of fewer is never passed off as a best of n.
"""
from __future__ import annotations

import logging
from typing import Sequence

from harness.records import Completion, stable_hash
from harness.rerank.pool import CandidatePool, RerankError
from harness.store import RunStore

log = logging.getLogger("harness.rerank")


def virtual_model_name(model: str, n: int, scorer_label: str) -> str:
    return f"{model}@bo{n}[{scorer_label}]"


def select_best(cands_by_index: dict[int, Completion], rewards: dict[str, float | None], n: int):
    """(completion, reward, first-n rewards) of the best of samples 0..n-1; None unless all n have a reward
    (a best of fewer is not a best of n: the curve drops such prompts too)."""
    pool = [(s, cands_by_index[s]) for s in range(n) if s in cands_by_index]
    if len(pool) < n or any(rewards.get(c.key) is None for _, c in pool):
        return None
    best = pool[0][1]
    for _, c in pool[1:]:
        if rewards[c.key] > rewards[best.key]:  # strictly greater: ties keep the lower sample index
            best = c
    return best, rewards[best.key], {s: rewards[c.key] for s, c in pool}


def write_virtual_models(target: RunStore, pool: CandidatePool, rewards: dict[str, float | None],
                         ns: Sequence[int], scorer, scorer_label: str) -> tuple[dict[str, int], dict[str, int]]:
    """One Completion per instance for each ``<model>@bo<n>[<label>]``. Returns (model -> count written,
    model -> instances left out for want of n scored samples)."""
    written: dict[str, int] = {}
    left_out: dict[str, int] = {}
    for n in ns:
        name = virtual_model_name(pool.model, n, scorer_label)
        recs = []
        for iid, by_index in sorted(pool.samples.items()):
            picked = select_best(by_index, rewards, n)
            if picked is None:
                left_out[name] = left_out.get(name, 0) + 1
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
        if left_out.get(name):
            log.warning("%s: %d instance(s) without %d scored samples left out", name, left_out[name], n)
    return written, left_out
