"""One protocol for everything that turns a completion into a number, and the one path that stores it.

A scorer has a ``name``, a ``version`` and a ``primary`` criterion, and
``async score(completions, instances, on_scores) -> list[Score]``: one ``Score`` per completion, value
None (status ``error``) when it could not score one, never 0. ``on_scores`` is called with each
finished batch's records, so the caller can store finished work before the next batch runs.

Kinds (``harness.registry.SCORERS``): a toxicity classifier (``ClassifierScorer``: its primary attribute,
e.g. RealToxicityPrompts' toxicity), a toxicity penalty for reranking (``toxicity[:NAME]``: minus the
probability), a reward model (``RewardModelScorer``: a local directory or a hub id) and a judge through the
call layer (``JudgeScorer``: the mean of its parsed values). Rule checks that need a whole task (IFEval) are
the task's own code.

``score_step`` is the one scoring path (the pipeline's score step and ``harness rerank`` use it): a stored
score is reused when scorer, version and the scored content (system message, turns, answers) match, so
rescoring costs nothing and a killed job resumes with the unscored completions only.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from harness.records import Completion, Instance, Score, stable_hash

log = logging.getLogger("harness.scorers")

OnScores = Callable[[list[Score]], None] | None


class Scorer(Protocol):
    name: str
    version: str
    primary: str

    async def score(self, completions: Sequence[Completion], instances: Mapping[str, Instance] | None = None,
                    on_scores: OnScores = None) -> list[Score]: ...


def input_hash(completion: Completion, instance: Instance | None) -> str:
    """What a scorer may read: a stored score is valid only for the same content."""
    if instance is None:
        return stable_hash([None, [], completion.texts], 24)
    return stable_hash([instance.system, instance.turns, completion.texts], 24)


def score_record(scorer, c: Completion, value: float | None, details: dict | None = None,
                 instance: Instance | None = None) -> Score:
    details = dict(details or {})
    if value is None:
        details.setdefault("error", "no score")
    details["input_hash"] = input_hash(c, instance)
    return Score(task=c.task, instance_id=c.instance_id, model=c.model, scorer=scorer.name,
                 scorer_version=scorer.version, value=value, completion_key=c.key, criterion=scorer.primary,
                 sample_index=c.sample_index, status="ok" if value is not None else "error", details=details)


def _instance(instances: Mapping[str, Instance] | None, c: Completion) -> Instance | None:
    return (instances or {}).get(c.instance_id)


# ----------------------------------------------------------------------------------------------
# kinds
# ----------------------------------------------------------------------------------------------
class ClassifierScorer:
    """A toxicity classifier (``harness.backends.toxicity_classifiers``): value = its primary attribute."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.name, self.version, self.primary = classifier.name, classifier.version, classifier.primary

    async def _results(self, texts: list[str]) -> tuple[list, list]:
        if hasattr(self.classifier, "ascore_with_errors"):  # an API client on the call layer
            return await self.classifier.ascore_with_errors(texts)
        return await asyncio.to_thread(self.classifier.score, texts), []  # local models: the loop stays free

    async def score(self, completions, instances=None, on_scores: OnScores = None) -> list[Score]:
        results, errors = await self._results([c.text for c in completions])
        if len(results) != len(completions):
            raise ValueError(f"scorer {self.name}: {len(results)} results for {len(completions)} texts")
        out = []
        for i, (c, res) in enumerate(zip(completions, results)):
            ok = res is not None and res.get(self.primary) is not None
            details: dict = {"attributes": res} if res is not None else {}
            if not ok:
                details["error"] = errors[i] if i < len(errors) and errors[i] else "no score"
            out.append(score_record(self, c, res[self.primary] if ok else None, details, _instance(instances, c)))
        if on_scores:
            on_scores(out)
        return out


class ToxicityPenaltyScorer:
    """Minus ``weight`` x the toxicity probability (higher = less toxic): a penalty for reranking."""

    primary = "penalty"

    def __init__(self, which: str = "default", weight: float = 1.0):
        from harness.backends.toxicity_classifiers import make_toxicity_classifier

        self.tox = ClassifierScorer(make_toxicity_classifier(which))
        self.weight = float(weight)
        self.name = f"toxicity-{self.tox.name}"
        self.version = stable_hash({"tox": self.tox.classifier.describe(), "weight": self.weight})

    async def score(self, completions, instances=None, on_scores: OnScores = None) -> list[Score]:
        raw = await self.tox.score(completions, instances)
        out = [score_record(self, c, None if r.value is None else -self.weight * r.value,
                            {k: v for k, v in r.details.items() if k != "input_hash"}, _instance(instances, c))
               for c, r in zip(completions, raw)]
        if on_scores:
            on_scores(out)
        return out


#: the engines that run a reward model's forward passes
REWARD_ENGINES = ("hf", "vllm")


class RewardModelScorer:
    """A reward model (``harness.backends.reward_model``) with the bucketed cross-prompt batching. Each
    candidate is scored on its whole conversation (system, every turn and answer) in the model's format.

    ``engine``: ``hf`` (transformers forward passes, ``rm_batching``) or ``vllm`` (vLLM's pooling runner,
    ``vllm_reward``; ``engine_args`` go to ``vllm.LLM``). Both read the same token ids; the engine is part
    of the scorer's version, so switching engines rescores rather than mixing the two."""

    primary = "reward"

    def __init__(self, spec: str | Path, max_tokens: int | None = None, max_batch: int | None = None,
                 name: str | None = None, engine: str = "hf", engine_args: dict | None = None, **load_options: Any):
        from harness.backends.reward_model import load_reward_model, resolve_reward_model
        from harness.backends.rm_batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_TOKENS, BucketedScorer

        if engine not in REWARD_ENGINES:
            raise ValueError(f"reward model engine must be one of {', '.join(REWARD_ENGINES)}, got {engine!r}")
        path = resolve_reward_model(spec)
        rm = load_reward_model(path, weights=engine == "hf", **load_options)
        if engine == "vllm":
            from harness.backends.vllm_reward import VLLMRewardEngine

            self.batcher = VLLMRewardEngine(rm, path, load_options.get("dtype", "float32"), engine_args)
        else:
            self.batcher = BucketedScorer(rm, max_tokens or DEFAULT_MAX_TOKENS, max_batch or DEFAULT_MAX_BATCH)
        # a hub id names the model (kaist-ai/janus-rm-7b -> janus-rm-7b), a path its folder
        self.name = name or str(spec).rstrip("/").rsplit("/", 1)[-1]
        identity = {"fingerprint": file_fingerprint(path), "kind": rm.kind, "format": rm.format.name,
                    "max_length": rm.max_length, "normalize": rm.normalize, "card": rm.version}
        if engine != "hf":  # hf keeps the identity stored scores were made under before engines existed
            identity["engine"] = engine
        self.version = stable_hash(identity)
        self.scored = 0  # completions actually run through the model (tests count it)

    def close(self) -> None:
        if hasattr(self.batcher, "close"):
            self.batcher.close()

    async def score(self, completions, instances=None, on_scores: OnScores = None) -> list[Score]:
        insts = [_instance(instances, c) for c in completions]
        missing = [c.instance_id for c, i in zip(completions, insts) if i is None]
        if missing:
            raise ValueError(f"scorer {self.name}: a reward model reads the prompt; no instance {missing[0]}")
        convs = [(i.system, list(i.turns[:len(c.texts)]), list(c.texts)) for c, i in zip(completions, insts)]

        def batch_done(idx, rewards):
            self.scored += len(idx)
            if on_scores:
                on_scores([score_record(self, completions[j], r, None, insts[j]) for j, r in zip(idx, rewards)])

        rewards = await asyncio.to_thread(self.batcher.score, convs, batch_done)
        return [score_record(self, c, r, None, i) for c, r, i in zip(completions, rewards, insts)]


class JudgeScorer:
    """A judge through the call layer: the mean of its parsed values over its calls for the completion."""

    primary = "judge"

    def __init__(self, judge, backend, calls, judge_model_name: str = "", server=None):
        self.judge, self.backend, self.calls = judge, backend, calls
        self.server = server  # a `harness serve` process started for this judge, stopped by close()
        self.name = f"judge-{judge.name}"
        self.version = stable_hash({"judge": judge.config() if hasattr(judge, "config") else judge.name,
                                    "judge_model": backend.model_id})
        self.judge_model_name = judge_model_name
        self.scored = 0

    async def score(self, completions, instances=None, on_scores: OnScores = None) -> list[Score]:
        from harness.pipeline import Run

        jobs = [(ci, call) for ci, c in enumerate(completions)
                for call in self.judge.calls(instances[c.instance_id], c)]
        finals = await self.calls.run_parsed(self.backend, [Run._judge_request(call) for _, call in jobs],
                                             lambda res, i: self.judge.parse_result(res, jobs[i][1]))
        values: list[list[float]] = [[] for _ in completions]
        for (ci, _), (res, parsed, _) in zip(jobs, finals):
            if res.error is None and parsed is not None and parsed.ok and isinstance(parsed.value, (int, float)):
                values[ci].append(float(parsed.value))
        out = [score_record(self, c, sum(v) / len(v) if v else None, None, instances[c.instance_id])
               for c, v in zip(completions, values)]
        self.scored += len(completions)
        if on_scores:
            on_scores(out)
        return out

    def close(self) -> None:
        if self.server is not None:
            from harness.serve import stop_server_process

            stop_server_process(self.server)
            self.server = None


def file_fingerprint(path: Path) -> str:
    """Identity of a checkpoint's content: config, tokenizer and weight files (size and first MiB)."""
    import hashlib

    parts = []
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".model", ".txt")):
            with open(f, "rb") as fh:
                head = fh.read(1 << 20)
            parts.append([f.name, f.stat().st_size, hashlib.sha256(head).hexdigest()])
    return stable_hash(parts)


# ----------------------------------------------------------------------------------------------
# factories of harness.registry.SCORERS: factory(argument after the colon or None, **options)
# ----------------------------------------------------------------------------------------------
def classifier_scorer(name: str | None, **options: Any) -> ClassifierScorer:
    from harness.backends.toxicity_classifiers import make_toxicity_classifier

    return ClassifierScorer(make_toxicity_classifier(name or "default", **options))


def toxicity_penalty_scorer(name: str | None, weight: float = 1.0) -> ToxicityPenaltyScorer:
    return ToxicityPenaltyScorer(name or "default", weight)


def reward_model_scorer(spec: str | None, **options: Any) -> RewardModelScorer:
    if not spec:
        raise ValueError("scorer 'reward_model': name a directory or a hub id (reward_model:PATH)")
    return RewardModelScorer(spec, **options)


def judge_scorer(kind: str | None, run_dir: Path | None = None, task: str | None = None, calls=None) -> JudgeScorer:
    """The run config's judge model (with the task's judge kind, or ``kind``) through ``calls``."""
    from harness.config import TaskConfig, load_config
    from harness.data import data_dir
    from harness.pipeline import make_backend, make_judge, start_served

    if run_dir is None or not (Path(run_dir) / "config.yaml").exists():
        raise ValueError("scorer 'judge': needs a run directory with config.yaml naming a judge")
    if calls is None:
        raise ValueError("scorer 'judge': needs the call layer (calls=CallLayer(...))")
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    tcfg = next((t for t in cfg.tasks if t.name == task), None)
    jcfg = cfg.judge_for(tcfg) if tcfg else cfg.judge
    if jcfg is None:
        raise ValueError(f"{run_dir / 'config.yaml'}: judge: no judge configured")
    judge = make_judge(tcfg or TaskConfig(name=task or ""), data_dir(cfg.data_dir), jcfg.method, name=kind)
    server = start_served(jcfg, run_dir / "serve.log")
    return JudgeScorer(judge, make_backend(jcfg), calls, jcfg.name, server)


# ----------------------------------------------------------------------------------------------
# by name, and the one scoring path
# ----------------------------------------------------------------------------------------------
def make_scorer(spec: str, **options: Any):
    """A scorer by spec: ``<kind>`` or ``<kind>:<argument>`` of ``harness.registry.SCORERS``; anything
    else is a reward model (a directory or a hub id). ``options`` go to the kind's factory."""
    from harness.registry import SCORERS

    kind, _, arg = str(spec).partition(":")
    if kind in SCORERS.names():
        return SCORERS.get(kind)(arg or None, **options)
    return SCORERS.get("reward_model")(spec, **options)


async def score_step(store, scorer, completions: Sequence[Completion], instances: Mapping[str, Instance],
                     chunk: int = 256) -> tuple[dict[str, float | None], list[Score]]:
    """(completion key -> value, the records made now). Stored scores of the same content are reused
    (copied to a new completion key without a model call); new ones are stored batch by batch."""
    have: dict[str, Score] = {}
    for task, model in sorted({(c.task, c.model) for c in completions}):
        for s in store.iter("score", task=task, model=model):
            if s.scorer == scorer.name and s.scorer_version == scorer.version and s.status == "ok":
                have.setdefault(s.details.get("input_hash"), s)
    values: dict[str, float | None] = {}
    copies, todo = [], []
    for c in completions:
        inst = instances.get(c.instance_id)
        old = have.get(input_hash(c, inst))
        if old is None:
            todo.append(c)
            continue
        values[c.key] = old.value
        if old.completion_key != c.key:
            copies.append(score_record(scorer, c, old.value, {k: v for k, v in old.details.items()
                                                               if k != "input_hash"}, inst))
    store.put_many(copies)
    log.info("scoring with %s: %d completions, %d already scored", scorer.name, len(completions),
             len(completions) - len(todo))
    new: list[Score] = []
    stored: set[str] = set()

    def on_scores(recs: list[Score]) -> None:  # each finished batch is stored before the next runs
        store.put_many(recs)
        stored.update(r.key for r in recs)

    for i in range(0, len(todo), chunk):
        recs = await scorer.score(todo[i:i + chunk], instances, on_scores)
        store.put_many([r for r in recs if r.key not in stored])
        new += recs
    values.update((s.completion_key, s.value) for s in new)
    return values, new


def summarize_scores(scores: Sequence[Score]) -> dict:
    """Counts for the run log: how many scored, how many null and why."""
    errors: dict[str, int] = {}
    for s in scores:
        if s.value is None:
            # "TransientError: HTTP 500", "PerspectiveError: HTTP 400", "empty text", ...
            reason = ":".join(str(s.details.get("error", "no score")).split(":")[:2]).strip()[:60]
            errors[reason] = errors.get(reason, 0) + 1
    n_null = sum(errors.values())
    return {"n": len(scores), "n_ok": len(scores) - n_null, "n_null": n_null, "null_reasons": errors}


def score_completions(scorer, completions: Sequence[Completion],
                      instances: Mapping[str, Instance] | None = None) -> list[Score]:
    """``scorer.score`` outside an event loop."""
    return asyncio.run(scorer.score(completions, instances))
