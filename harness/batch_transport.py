"""The Batch API behind the call layer: ``BatchTransport`` (a backend whose one call is one batch job of
``harness.batch_api.BatchJob``) and ``batch_judge`` (the judge step of a run with that transport)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness.backends.base import GenRequest, GenResult
from harness.batch_api import BatchJob, BatchReport


class BatchPending(BaseException):
    """A batch is still running and the caller does not wait. Not an ``Exception``: the call layer
    must not record it as a failed call; the judge step stops and stores nothing for those requests."""


class BatchTransport:
    """The Batch API as a backend: one call of the call layer is one batch job (submitted, polled and
    collected by ``BatchJob``). The call layer keeps its role: the cache lookup before, the cache write
    (the same entries an online call writes: same model id, same request keys) and the records after.
    Answers are also written to the cache as a batch is collected, so a kill costs no paid answer."""

    supports_n = False
    default_concurrency = 1
    local = True  # no per-call timeout: a batch takes minutes to hours
    result_class = GenResult

    def __init__(self, backend, job: BatchJob, wait: bool = True):
        self.backend, self.job, self.wait = backend, job, wait
        self.name, self.model, self.model_id = backend.name, backend.model, backend.model_id
        self.secrets = getattr(backend, "secrets", ())
        self.max_batch = 10 ** 9  # every miss in one call; BatchJob splits at the API's limit
        self.report = BatchReport()
        self._seen: set[str] = set()

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        keys = [r.cache_key(self.model_id) for r in requests]
        rep = await asyncio.to_thread(self.job.run, requests, self.wait)
        self._add(rep, keys)
        if rep.pending:
            raise BatchPending(f"batch of {len(set(keys))} requests still running")
        have = self.job.cache.get_many(keys)
        failed = self.job.load_state()["failed"]
        return [GenResult.from_dict(have[k]) if k in have else
                GenResult(error=f"batch API: {failed.get(k, 'no answer after the last round')}") for k in keys]

    def _add(self, rep: BatchReport, keys: list[str]) -> None:
        new = set(keys) - self._seen
        if new:  # the first look at these requests
            self._seen |= new
            self.report.cached_before += rep.cached_before
        t = self.report
        t.requests = len(self._seen)
        t.submitted_batches += rep.submitted_batches
        t.submitted_requests += rep.submitted_requests
        t.received += rep.received
        t.failed, t.missing, t.pending = rep.failed, rep.missing, rep.pending


def _state_path(out: Path, cfg, jcfg) -> Path:
    # one ledger per judge model: BatchJob refuses a state of another model id
    return out / ("batch_state.json" if jcfg is cfg.judge else f"batch_state.{jcfg.name}.json")


async def batch_judge(cfg, out: str | Path, wait: bool = True, poll_interval_s: float = 30.0,
                      client=None, sleep=time.sleep) -> BatchReport:
    """Generate (if needed), then the pipeline's judge step with the Batch API as its transport, then
    aggregate. Every task's batch is submitted before any is waited for."""
    from harness.lock import RunLock
    from harness.pipeline import Run, make_backend, run_all

    judged = [(t, cfg.judge_for(t)) for t in cfg.tasks if cfg.judge_for(t) is not None]
    for _, jcfg in judged:
        if jcfg.backend != "openai":
            raise ValueError(f"{cfg.source or '<config>'}: judge.backend: the Batch API needs an 'openai' judge")
    await run_all(cfg, out, steps=("build", "generate"))
    out = Path(out)
    transports: dict[int, BatchTransport] = {}
    with RunLock(out):
        run = Run(cfg, out)
        try:
            for _, jcfg in judged:
                if id(jcfg) not in transports:
                    job = BatchJob(run.calls.cache, jcfg.model, make_backend(jcfg).model_id,
                                   _state_path(out, cfg, jcfg), base_url=jcfg.base_url, api_key_env=jcfg.api_key_env,
                                   extra_body=jcfg.options.get("extra_body"), poll_interval_s=poll_interval_s,
                                   prices=run.calls.settings.prices, client=client)
                    transports[id(jcfg)] = BatchTransport(make_backend(jcfg), job, wait=False)
                    run._backends[id(jcfg)] = transports[id(jcfg)]  # the judge step's backend
            while True:
                pending = False
                for tcfg, jcfg in judged:
                    try:
                        await run.judge(tcfg, jcfg)
                    except BatchPending:
                        pending = True
                if not pending or not wait:
                    break
                sleep(poll_interval_s)
            if not pending:
                run.aggregate(cfg.tasks)
        finally:
            run.close()
    reports = [t.report for t in transports.values()]
    total = BatchReport(pending=any(r.pending for r in reports))
    for r in reports:
        for k in ("requests", "cached_before", "submitted_batches", "submitted_requests", "received", "failed",
                  "missing"):
            setattr(total, k, getattr(total, k) + getattr(r, k))
    return total
