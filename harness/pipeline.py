"""build -> generate -> judge -> aggregate, each step reading the previous step's records.

Every step skips records already stored (by content key), so rerunning a command
after a crash resumes it; the call cache makes calls that finished before a crash
free on the rerun.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from harness.backends.base import GenRequest
from harness.calls import CallLayer, CallSettings, CallStats, counting
from harness.config import JudgeConfig, ModelConfig, RunConfig, TaskConfig
from harness.data import data_dir as default_data_dir
from harness.lock import RunLock
from harness.provenance import graded_by
from harness.records import Completion, Instance, Judgment, stable_hash
from harness.registry import BACKENDS, JUDGES, TASKS
from harness.stage_times import is_local, stage
from harness.environment import environment
from harness.store import RunStore, atomic_write_text, remove_stale_temp_files, write_jsonl

log = logging.getLogger("harness")

def make_backend(cfg: ModelConfig):
    cls = BACKENDS.get(cfg.backend)
    return cls(cfg.model, **cfg.backend_kwargs())


def start_served(cfg: ModelConfig, log_path: Path):
    """A model with a ``serve:`` block and no ``base_url``: start `harness serve` for it and point
    ``base_url`` at it. Returns the server process (the caller stops it), or None."""
    if cfg.serve is None or cfg.base_url:
        return None
    from harness.serve import start_server_process

    opts = dict(cfg.serve)
    proc, cfg.base_url = start_server_process(opts.get("model", "default"), cfg.model,
                                              batch_size=int(opts.get("batch_size", 8)),
                                              workers=int(opts.get("workers", 1)),
                                              chat_template=opts.get("chat_template", "tokenizer"),
                                              log_path=str(log_path))
    return proc


def make_judge(tcfg: TaskConfig, data_dir: Path, method: str = "text", name: str | None = None):
    """The judge kind that grades a task (``name``, else ``tasks[].judge``, else the task's own),
    with its options and the run's data dir; None for a task no judge grades."""
    name = name or tcfg.judge or TASKS.get(tcfg.name).default_judge
    if name is None:  # scored by a classifier, or not judged at all
        return None
    opts = dict(tcfg.judge_options)
    if method == "logprob":
        opts["method"] = method
    return JUDGES.get(name)(opts, data_dir=data_dir)


class Run:
    """One run directory: config, environment, records, cache, exports."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path):
        self.cfg = cfg
        self.dir = Path(out_dir)
        self.store = RunStore(self.dir)
        remove_stale_temp_files(self.dir)  # a killed run's half-written outputs (the caller holds the lock)
        self.calls = CallLayer(self.dir / "cache.sqlite", CallSettings.from_dict(cfg.calls))
        self.data_dir = default_data_dir(cfg.data_dir)
        self.summary: dict = {"generation": {}, "judging": {}, "stages": []}
        self._servers: list = []
        self._backends: dict[int, object] = {}  # per model config: one load per run, not per task
        atomic_write_text(self.dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(self.dir / "environment.json", json.dumps(environment(), indent=2))

    # -- tasks
    def task(self, tcfg: TaskConfig):
        return TASKS.get(tcfg.name)(options=tcfg.options, data_dir=self.data_dir)

    def build(self, tcfg: TaskConfig, instances: list[Instance] | None = None) -> list[Instance]:
        if instances is None:
            instances = load_instances(tcfg, self.data_dir)
        self.store.put_many(instances)
        # the instances of this build are the current ones: older versions stay stored, unreachable
        self.store.set_current_instances(tcfg.name, [i.key for i in instances])
        return instances

    def instances(self, tcfg: TaskConfig) -> list[Instance]:
        """The current instances of a task (its latest build)."""
        return self.store.current_instances(tcfg.name)

    def completions(self, tcfg: TaskConfig, ok_only: bool = True) -> list[Completion]:
        return self.store.current_completions(tcfg.name, ok_only)

    # -- generate
    async def generate(self, tcfg: TaskConfig, mcfg: ModelConfig, instances: list[Instance]) -> CallStats:
        task = self.task(tcfg)
        if getattr(task, "drives_requests", False):
            return await self._generate_driven(task, mcfg, instances)
        spec = task.generation_spec()
        for k, v in mcfg.generation.items():
            if not hasattr(spec, k):
                raise ValueError(f"models[{mcfg.name}].generation.{k}: unknown generation setting")
            setattr(spec, k, v)
        backend = self._backend(mcfg)
        ident = {"spec": spec.to_dict(), "model_id": backend.model_id}
        system = mcfg.system_key(self.cfg.generic_system)
        if system is not None:  # a system-message ablation variant (absent for the default: keys unchanged)
            ident["system"] = system
        gen_hash = stable_hash(ident)
        self.store.set_current_generation(task.name, mcfg.name, gen_hash)
        with counting() as delta:  # this step's calls only, while others may run beside it
            done = self.store.keys("completion")
            todo = [(inst, s) for inst in instances for s in range(spec.n_samples)
                    if Completion(task.name, inst.id, mcfg.name, [], s, instance_key=inst.key,
                                  gen_config_hash=gen_hash).key not in done]
            n_turns = max((len(i.turns) for i, _ in todo), default=0) if spec.chat else 1
            answers: dict[tuple[str, int], list[str]] = {(i.id, s): [] for i, s in todo}
            meta: dict[tuple[str, int], dict] = {k: {"finish": [], "pt": 0, "ct": 0, "lat": 0.0, "err": None}
                                                for k in answers}
            for t in range(n_turns):
                active = [(i, s) for i, s in todo if t < len(i.turns) and meta[(i.id, s)]["err"] is None]
                if not active:
                    break
                reqs = [self._gen_request(task, spec, i, s, answers[(i.id, s)], t, mcfg) for i, s in active]

                def on_result(j: int, res, active=active, t=t) -> None:
                    # stored as each answer arrives: a crash loses only the calls in flight
                    inst, s = active[j]
                    m = meta[(inst.id, s)]
                    if res.error:
                        m["err"] = res.error
                        return
                    answers[(inst.id, s)].append(res.text)
                    m["finish"].append(res.finish_reason)
                    m["pt"] += res.prompt_tokens
                    m["ct"] += res.completion_tokens
                    m["lat"] += res.latency_s
                    if t == len(inst.turns) - 1 or not spec.chat:
                        self.store.put(self._completion(task, mcfg, inst, s, gen_hash, answers, m, backend))

                await self.calls.run(backend, reqs, on_result=on_result)
            for inst, s in todo:  # failures are stored too, so the summary can count them
                m = meta[(inst.id, s)]
                if m["err"] is not None:
                    self.store.put(self._completion(task, mcfg, inst, s, gen_hash, answers, m, backend))
        failed = sum(meta[(i.id, s)]["err"] is not None for i, s in todo)
        self.summary["generation"][f"{task.name}/{mcfg.name}"] = {
            "todo": len(todo), "failed_completions": failed,
            "skipped_done": len(instances) * spec.n_samples - len(todo), **delta.to_dict()}
        return delta

    async def _generate_driven(self, task, mcfg: ModelConfig, instances: list[Instance]) -> CallStats:
        """A task that builds its own requests (lm-eval): it runs in a worker thread and sends
        them through the call layer on this loop; its records are stored when it returns."""
        backend = self._backend(mcfg)
        gen = task.model_generation(mcfg.generation, f"models[{mcfg.name}].generation")
        system = mcfg.system_key(self.cfg.generic_system)
        ident = {"task": task.settings(), "generation": gen, "model_id": backend.model_id}
        if system is not None:
            ident["system"] = system
        gen_hash = stable_hash(ident)
        self.store.set_current_generation(task.name, mcfg.name, gen_hash)
        done = self.store.keys("completion")
        todo = [i for i in instances if Completion(task.name, i.id, mcfg.name, [], 0, instance_key=i.key,
                                                   gen_config_hash=gen_hash).key not in done]
        with counting() as delta:  # this step's calls only, while others may run beside it
            if todo:
                loop = asyncio.get_running_loop()

                def submit(reqs):
                    return asyncio.run_coroutine_threadsafe(self.calls.run(backend, reqs), loop).result()

                recs = await asyncio.to_thread(task.evaluate_model, submit, backend, mcfg.name, todo, gen_hash,
                                               self.cfg.seed, gen, system)
                self.store.put_many(recs)
        self.summary["generation"][f"{task.name}/{mcfg.name}"] = {
            "todo": len(todo), "failed_completions": 0, "skipped_done": len(instances) - len(todo), **delta.to_dict()}
        return delta

    def _gen_request(self, task, spec, inst: Instance, s: int, prev: list[str], t: int,
                     mcfg: ModelConfig | None = None) -> GenRequest:
        extra = task.sampling_for(inst) if hasattr(task, "sampling_for") else {}
        kw = dict(max_tokens=spec.max_tokens, temperature=spec.temperature, top_p=spec.top_p,
                  repetition_penalty=spec.repetition_penalty, stop=spec.stop, sample_index=s,
                  seed=self.cfg.seed)
        kw.update(extra)
        if not spec.chat:
            return GenRequest(prompt=inst.turns[0], **kw)
        system = mcfg.system_message(inst.system, self.cfg.generic_system) if mcfg else inst.system
        msgs = [{"role": "system", "content": system}] if system else []
        for j in range(t):
            msgs += [{"role": "user", "content": inst.turns[j]}, {"role": "assistant", "content": prev[j]}]
        msgs.append({"role": "user", "content": inst.turns[t]})
        return GenRequest(messages=msgs, **kw)

    def _completion(self, task, mcfg, inst, s, gen_hash, answers, m, backend) -> Completion:
        return Completion(task=task.name, instance_id=inst.id, model=mcfg.name, texts=answers[(inst.id, s)],
                          sample_index=s, instance_key=inst.key, finish_reasons=m["finish"], prompt_tokens=m["pt"],
                          completion_tokens=m["ct"], latency_s=m["lat"], backend=backend.name,
                          gen_config_hash=gen_hash, status="error" if m["err"] else "ok", error=m["err"])

    # -- score (classifiers, e.g. toxicity): one number per completion, through harness.scorers
    async def score(self, tcfg: TaskConfig, chunk: int = 256) -> dict:
        task = self.task(tcfg)
        name = task.options.get("scorer", getattr(task, "default_scorer", None))
        if not name:
            return {}
        from harness.scorers import make_scorer, score_step, summarize_scores

        opts = dict(task.options.get("scorer_options", {}))
        if name == "perspective":
            opts.setdefault("layer", self.calls)
        scorer = make_scorer(f"classifier:{name}", **opts)
        instances = {i.id: i for i in self.instances(tcfg)}
        _, new = await score_step(self.store, scorer, self.completions(tcfg), instances, chunk)
        summary = {"scorer": scorer.name, "version": scorer.version, "todo": len(new), **summarize_scores(new)}
        self.summary.setdefault("scoring", {})[task.name] = summary
        return summary

    # -- judge
    async def judge(self, tcfg: TaskConfig, jcfg: JudgeConfig, models: list[str] | None = None) -> CallStats:
        task = self.task(tcfg)
        judge = make_judge(tcfg, self.data_dir, jcfg.method)
        if judge is None:
            return CallStats()
        backend = self._backend(jcfg)
        jhash = stable_hash({"judge": judge.config(), "judge_model": backend.model_id})
        self.store.set_current_judge(task.name, judge.name, jhash)
        instances = {i.id: i for i in self.instances(tcfg)}
        done = self.store.keys("judgment")
        with counting() as delta:  # this step's calls only, while others may run beside it
            pending: list[tuple[Judgment, object]] = []
            for c in self.completions(tcfg):
                if models and c.model not in models:
                    continue
                for call in judge.calls(instances[c.instance_id], c):
                    rec = Judgment(task=task.name, instance_id=c.instance_id, model=c.model, judge=judge.name,
                                   judge_model=jcfg.name, judge_config_hash=jhash, criterion=call.criterion,
                                   completion_key=c.key, baseline=call.baseline, position=call.position,
                                   prompt=call.messages, method="logprob" if call.logprob_prefix is not None else "text")
                    if rec.key not in done:
                        pending.append((rec, call))
            reqs = [self._judge_request(call) for _, call in pending]
            counts = {"ok": 0, "parse_failure": 0, "error": 0}

            def reask(i, req, res, parsed):
                # the judge's own follow-up (Arena-Hard's "continue your judgment"), else the same prompt again
                rec, call = pending[i]
                nxt = judge.followup(call, res.text)
                if nxt is None:
                    return None
                if nxt is call:
                    return self.calls.reask_same(req)
                pending[i] = (rec, nxt)
                return self._judge_request(nxt)

            def on_final(i, res, parsed, attempts):
                rec, call = pending[i]
                rec.attempts = attempts
                rec.prompt = call.messages
                rec.raw = judge.transcript(call, res.text) if res.error is None else None
                rec.prompt_tokens, rec.completion_tokens, rec.cost = res.prompt_tokens, res.completion_tokens, res.cost
                if res.error is not None:
                    rec.parse_status, rec.details = "error", {"error": res.error}
                elif parsed.ok:
                    rec.parse_status, rec.value = "ok", parsed.value
                    if parsed.reason:
                        rec.details = {"parse": parsed.reason}
                else:
                    rec.parse_status, rec.value, rec.details = "parse_failure", parsed.value, {"parse": parsed.reason}
                counts[rec.parse_status] += 1
                self.store.put(rec)

            await self.calls.run_parsed(backend, reqs, lambda res, i: judge.parse_result(res, pending[i][1]),
                                        on_final=on_final, reask=reask)
        first_error = next((r.details.get("error") for r, _ in pending if r.parse_status == "error"), None)
        self.summary["judging"][f"{task.name}/{judge.name}"] = {"todo": len(pending), **counts, **delta.to_dict(),
                                                               "first_error": first_error}
        return delta

    @staticmethod
    def _judge_request(call) -> GenRequest:
        if call.logprob_prefix is not None:
            msgs = call.messages + [{"role": "assistant", "content": call.logprob_prefix}]
            return GenRequest(messages=msgs, max_tokens=1, temperature=0.0, logprobs=True,
                              top_logprobs=call.top_logprobs, continue_final_message=True,
                              sample_index=call.meta.get("sample_index", call.sample_index))
        return GenRequest(messages=call.messages, max_tokens=call.max_tokens, temperature=call.temperature,
                          top_p=call.meta.get("top_p", call.top_p),
                          sample_index=call.meta.get("sample_index", call.sample_index),
                          logprobs=call.want_logprobs, top_logprobs=call.top_logprobs if call.want_logprobs else 0)

    def _backend(self, mcfg: ModelConfig):
        if id(mcfg) in self._backends:
            return self._backends[id(mcfg)]
        proc = start_served(mcfg, self.dir / "serve.log")
        if proc is not None:
            self._servers.append(proc)
        self._backends[id(mcfg)] = make_backend(mcfg)
        return self._backends[id(mcfg)]

    # -- aggregate
    def aggregate(self, tasks: list[TaskConfig]) -> dict:
        results, failures = {}, {}
        (self.dir / "samples").mkdir(exist_ok=True)
        for tcfg in tasks:
            task = self.task(tcfg)
            inst, comps, judg, scores = self.store.current(tcfg.name)
            ok_comps = [c for c in comps if c.status == "ok"]
            results[task.name] = task.aggregate(inst, ok_comps, judg, scores)
            by_logprob = any(j.method == "logprob" for j in judg)
            for model, metrics in results[task.name].items():  # labels the reports read
                for attr in ("primary_metric", "official_metrics", "lower_is_better"):
                    if hasattr(task, attr):
                        metrics.setdefault(attr, getattr(task, attr))
                # who graded it, so a report calls "official" only the official judge's outputs
                metrics.update(graded_by(self.cfg.judge_for(tcfg), [j for j in judg if j.model == model],
                                         [x for x in scores if x.model == model]))
                if by_logprob:
                    # the aggregation is the official one, but a logprob-scored judge is not
                    metrics["official_metrics"] = []
                    metrics["judge_method"] = "logprob"
            write_jsonl(self.dir / "samples" / f"{task.name}.jsonl", task.per_sample(inst, ok_comps, judg, scores))
            failures[task.name] = {
                "generation_errors": sum(c.status != "ok" for c in comps),
                "judge_errors": sum(j.parse_status == "error" for j in judg),
                "judge_parse_failures": sum(j.parse_status == "parse_failure" for j in judg),
                "score_nulls": sum(x.status != "ok" for x in scores),
            }
        out = {"run": {"name": self.cfg.name, "created": datetime.now(timezone.utc).isoformat(),
                       "dir": str(self.dir)},
               "results": results, "failures": failures, "calls": self.calls.stats.to_dict(),
               "summary": self.summary}
        atomic_write_text(self.dir / "results.json", json.dumps(out, indent=2, default=str))
        from harness.run_leaderboard import write_run_leaderboard

        write_run_leaderboard(self.dir, results)
        return out

    def close(self) -> None:
        from harness.serve import stop_server_process

        for p in self._servers:
            stop_server_process(p)
        self.calls.close()
        self.store.close()


def load_instances(tcfg: TaskConfig, data_dir: Path) -> list[Instance]:
    task = TASKS.get(tcfg.name)(options=tcfg.options, data_dir=data_dir)
    instances = task.load()
    if tcfg.limit:
        instances = instances[: tcfg.limit]
    ids = [i.id for i in instances]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})[:5]
        raise ValueError(f"task {tcfg.name}: duplicate instance ids {dup}")
    return instances


async def execute(run: Run, steps, instances: dict[str, list[Instance]] | None = None,
                  models: list[str] | None = None) -> dict:
    """The one step engine: each step asks the store what is still to do and does it.

    A task's score and judge steps start as soon as its generations are stored, and run while the
    next task generates: a local judge server (or an API) works while the in-process model does.
    Each step's rows count only its own calls (``harness.calls.counting``). ``run`` (one process over
    a whole config), ``shard run`` (an instance filter: it passes its part as ``instances``) and
    ``batch`` compose this; nothing else loops over steps.
    """
    cfg = run.cfg
    stages = run.summary.setdefault("stages", [])
    t_start = time.perf_counter()

    def local(m):  # read after the step: the backend is made inside it
        return lambda: is_local(run._backends.get(id(m)), m)

    async def score_and_judge(tcfg: TaskConfig) -> None:
        if "generate" in steps or "score" in steps:
            with stage(stages, "score", tcfg.name):
                scored = await run.score(tcfg)
            if not scored:  # no classifier scores this task: no row (no await since the row was appended:
                stages.pop()  # it is still the last one, whatever runs beside this step)
        jcfg = cfg.judge_for(tcfg)
        if "judge" in steps and jcfg is not None:
            with stage(stages, "judge", tcfg.name, jcfg.name, local(jcfg)):
                st = await run.judge(tcfg, jcfg, models)
            log.info("judge %s: %d requests, %d from cache, %d failed", tcfg.name, st.requests, st.cached,
                     st.failed)

    # one task's scoring and judging at a time (in config order), beside the generation of the next
    chain: asyncio.Task | None = None

    async def after(prev: asyncio.Task | None, tcfg: TaskConfig) -> None:
        if prev is not None:
            await prev
        await score_and_judge(tcfg)

    try:
        for tcfg in cfg.tasks:
            if "build" in steps:
                with stage(stages, "build", tcfg.name):
                    current = run.build(tcfg, instances[tcfg.name] if instances else None)
            else:
                current = run.instances(tcfg)
            if "generate" in steps:
                for m in cfg.models:
                    if models and m.name not in models:
                        continue
                    with stage(stages, "generate", tcfg.name, m.name, local(m)):
                        st = await run.generate(tcfg, m, current)
                    log.info("generate %s/%s: %d requests, %d from cache, %d failed",
                             tcfg.name, m.name, st.requests, st.cached, st.failed)
                    if chain is not None and chain.done():
                        chain.result()  # a failed judge step stops the run now, not after all generation
            chain = asyncio.ensure_future(after(chain, tcfg))
        if chain is not None:
            await chain
    except BaseException:
        if chain is not None and not chain.done():
            chain.cancel()
            with contextlib.suppress(BaseException):
                await chain
        raise
    run.summary["elapsed_s"] = round(time.perf_counter() - t_start, 3)
    if "aggregate" in steps:
        with stage(stages, "aggregate"):
            out = run.aggregate(cfg.tasks)
        # written again so that results.json holds the aggregate stage's own row too
        atomic_write_text(run.dir / "results.json", json.dumps(out, indent=2, default=str))
        return out
    return {"summary": run.summary, "calls": run.calls.stats.to_dict()}


def load_all(cfg: RunConfig) -> dict[str, list[Instance]]:
    """Read and validate every task's data: done before anything is created on disk."""
    data = default_data_dir(cfg.data_dir)
    return {t.name: load_instances(t, data) for t in cfg.tasks}


async def run_all(cfg: RunConfig, out_dir: str | Path, steps=("build", "generate", "judge", "aggregate"),
                  models: list[str] | None = None) -> dict:
    loaded = load_all(cfg) if "build" in steps else None
    with RunLock(out_dir):
        run = Run(cfg, out_dir)
        try:
            return await execute(run, steps, loaded, models)
        finally:
            run.close()


def all_failed(summary: dict) -> list[str]:
    """Steps in which every call of this run failed (a 401, a model that cannot load)."""
    out = []
    for key, g in summary.get("generation", {}).items():
        if g.get("todo") and g.get("failed_completions") == g["todo"]:
            out.append(f"{key}: {g['todo']} of {g['todo']} generations failed")
    for key, j in summary.get("judging", {}).items():
        if j.get("todo") and j.get("error") == j["todo"]:
            why = f" (first error: {j['first_error']})" if j.get("first_error") else ""
            out.append(f"{key}: {j['todo']} of {j['todo']} judge calls failed{why}")
    return out
