"""The one road to any model: cache -> limiter -> retry -> backend -> cache write.

Every generation, judge, reward-scoring and toxicity-API call goes through
``CallLayer.run``. It is generic over backends and requests (see ``Backend`` in
``harness.backends.base``): a request knows its cache key, a result can be turned
into a dict and back.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from aiolimiter import AsyncLimiter

from harness.backends.base import TransientError
from harness.call_settings import CallSettings  # noqa: F401  (re-exported: the call layer's settings)
from harness.redact import redact
from harness.store import StoreError, grouped_writes, write_transaction

log = logging.getLogger("harness.calls")


class BudgetExceeded(RuntimeError):
    """The configured ``max_cost`` was reached; finished calls are cached, the rest not sent."""


@dataclass
class CallStats:
    requests: int = 0
    cached: int = 0
    sent: int = 0  # backend calls made (one may serve several requests)
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def add(self, other: "CallStats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# the CallStats of the `counting()` blocks the current task runs inside (copied into the tasks it starts)
_SINKS: contextvars.ContextVar[tuple[CallStats, ...]] = contextvars.ContextVar("harness_call_sinks", default=())


@contextlib.contextmanager
def counting():
    """The stats of the calls made inside this block, by this task and the tasks and threads it starts,
    and none of a block running concurrently beside it (a judge step overlapping a generate step)."""
    mine = CallStats()
    token = _SINKS.set(_SINKS.get() + (mine,))
    try:
        yield mine
    finally:
        _SINKS.reset(token)


class CallCache:
    """Content-addressed response cache in SQLite (WAL)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, model TEXT, data TEXT, "
                             "created REAL)")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.path}: cannot open the call cache: {e}") from None

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(uniq), 500):
                chunk = uniq[i:i + 500]
                q = f"SELECT key, data FROM cache WHERE key IN ({','.join('?' * len(chunk))})"
                for k, data in self._db.execute(q, chunk):
                    out[k] = json.loads(data)
        return out

    def put_many(self, items: list[tuple[str, str, dict]]) -> None:
        if not items:
            return
        now = time.time()
        rows = [(k, m, json.dumps(d, ensure_ascii=False), now) for k, m, d in items]
        with self._lock:
            write_transaction(self._db,
                              lambda db: db.executemany("INSERT OR REPLACE INTO cache VALUES (?,?,?,?)", rows),
                              f"{self.path}: cannot write the call cache")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


async def _with_timeout(coro, timeout: float | None):
    if not timeout:
        return await coro
    try:
        if _timeout_cm is not None:  # Python 3.11+: no extra task per call, unlike wait_for
            async with _timeout_cm(timeout):
                return await coro
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError as e:
        raise TransientError(f"timeout after {timeout}s") from e


_timeout_cm = getattr(asyncio, "timeout", None)
_HIT_GROUP = 500  # cache hits whose callbacks' run-store writes share one transaction


def _price(prices: dict, model_id: str, model: str) -> dict | None:
    return prices.get(model_id) or prices.get(model)


class _GroupCommit:
    """Finished calls committed together: those answered in one event-loop turn share one cache
    transaction, then their callbacks run and the run-store writes they make share one more
    (``harness.store.grouped_writes``). One commit per turn instead of two per call; a callback
    runs only after its result is in the cache; ``add`` returns once its item is committed."""

    def __init__(self, commit: Callable[[list], None]):
        self.commit = commit
        self.items: list = []
        self.done: asyncio.Future | None = None

    async def add(self, item) -> None:
        self.items.append(item)
        if len(self.items) > 1:  # the first call finished in this turn commits for all
            await asyncio.shield(self.done)
            return
        self.done = done = asyncio.get_running_loop().create_future()
        try:
            await asyncio.sleep(0)  # one loop turn: the calls answered with this one join it
        finally:  # also when cancelled: what finished is kept
            items, self.items = self.items, []
            try:
                self.commit(items)
            finally:
                done.set_result(None)


class CallLayer:
    """Cache lookup, concurrency and rate limits, retries, accounting."""

    def __init__(self, cache_path: str | Path, settings: CallSettings | None = None):
        self.settings = settings or CallSettings()
        self.cache = CallCache(cache_path)
        # values that must never reach a record or the cache (API keys of the backends used)
        self.secrets: list[str] = []
        self.stats = CallStats()
        self._limiters: dict[str, AsyncLimiter] = {}

    def _limiter(self, backend) -> AsyncLimiter | None:
        rps = getattr(backend, "rps", None) or self.settings.rps
        if not rps:
            return None
        key = backend.model_id
        if key not in self._limiters:
            # max_rate per 1 s window; a burst of at most ceil(rps) requests
            self._limiters[key] = AsyncLimiter(max(1.0, rps), 1.0 if rps >= 1 else 1.0 / rps)
        return self._limiters[key]

    async def run(self, backend, requests: Sequence[Any],
                  on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Results in request order. A result whose retries ran out has ``error`` set."""
        result_cls = getattr(backend, "result_class", None)
        if result_cls is None:
            from harness.backends.base import GenResult as result_cls  # noqa: N813
        stats = CallStats(requests=len(requests))
        for secret in getattr(backend, "secrets", ()):
            if secret not in self.secrets:
                self.secrets.append(secret)
        model_id = backend.model_id
        keys = [r.cache_key(model_id) for r in requests]
        hits = self.cache.get_many(keys)
        results: list[Any] = [None] * len(requests)
        misses = [i for i, k in enumerate(keys) if k not in hits]
        found = [i for i, k in enumerate(keys) if k in hits]
        for start in range(0, len(found), _HIT_GROUP):  # the callbacks' writes, a few hundred per commit
            with grouped_writes():
                for i in found[start:start + _HIT_GROUP]:
                    res = result_cls.from_dict(hits[keys[i]])
                    res.cached = True
                    results[i] = res
                    stats.cached += 1
                    if on_result:
                        on_result(i, res)

        # identical requests (same cache key) are one call with one answer, shared by all copies
        copies: dict[str, list[int]] = {}
        for i in misses:
            copies.setdefault(keys[i], []).append(i)
        batches = self._batches(backend, requests, [group[0] for group in copies.values()])
        conc = self.settings.concurrency or getattr(backend, "default_concurrency", 1)
        limiter = self._limiter(backend)
        timeout = None if getattr(backend, "local", False) else self.settings.timeout_s
        price = _price(self.settings.prices, model_id, getattr(backend, "model", ""))
        progress = None
        if self.settings.progress and batches:
            from tqdm import tqdm
            progress = tqdm(total=len(misses), desc=f"{backend.name}:{getattr(backend, 'model', '')}"[:40],
                            unit="call", leave=False)

        def commit(group: list[tuple[list[int], list]]) -> None:
            self.cache.put_many([row for _, rows in group for row in rows])
            with grouped_writes():  # the run-store writes of the callbacks: one transaction
                for batch, _ in group:
                    for i in batch:
                        for j in copies[keys[i]]:
                            if on_result:
                                on_result(j, results[j])
            if progress is not None:
                progress.update(sum(len(copies[keys[i]]) for batch, _ in group for i in batch))
                if stats.cost:
                    progress.set_postfix(cost=f"${self.stats.cost + stats.cost:.4f}")

        group = _GroupCommit(commit)

        async def one(batch: list[int]) -> None:
            reqs = [requests[i] for i in batch]
            if self.settings.max_cost is not None and self.stats.cost + stats.cost >= self.settings.max_cost:
                raise BudgetExceeded(f"cost limit ${self.settings.max_cost:.4f} reached "
                                     f"(spent ${self.stats.cost + stats.cost:.4f}); rerun with a higher "
                                     f"--max-cost to continue")
            try:
                outs, err = await self._call(backend, reqs, stats, limiter, timeout), None
            except Exception as e:  # retries exhausted or a permanent error
                err = f"{type(e).__name__}: {e}"
                outs = None
            if outs is None:
                outs = [result_cls(error=redact(err, self.secrets)) for _ in batch]
                stats.failed += sum(len(copies[keys[i]]) for i in batch)
            rows = []
            for i, res in zip(batch, outs):
                if res.error is None:
                    if price:
                        res.cost = (getattr(res, "prompt_tokens", 0) * price.get("prompt", 0.0)
                                    + getattr(res, "completion_tokens", 0) * price.get("completion", 0.0)) / 1e6
                    rows.append((keys[i], model_id, res.to_dict()))
                    stats.prompt_tokens += getattr(res, "prompt_tokens", 0)
                    stats.completion_tokens += getattr(res, "completion_tokens", 0)
                    stats.cost += getattr(res, "cost", 0.0)
                for j in copies[keys[i]]:
                    results[j] = res
            # the worker takes its next batch only once this one is committed: a kill costs at most
            # `concurrency` calls
            await group.add((batch, rows))

        todo = iter(batches)

        async def worker() -> None:  # `conc` workers over one iterator: at most `conc` calls at a time
            for batch in todo:
                await one(batch)

        try:
            await asyncio.gather(*(worker() for _ in range(min(conc, len(batches)))))
        finally:
            if progress is not None:
                progress.close()
            self.stats.add(stats)
            for sink in _SINKS.get():
                sink.add(stats)
        return results

    async def _call(self, backend, reqs: list, stats: CallStats, limiter, timeout: float | None) -> list:
        """One backend call with retries: a TransientError is retried after a backoff (or the
        server's Retry-After) up to ``max_retries`` times; the last error is raised."""
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                stats.retries += 1
            if limiter is not None:
                await limiter.acquire()
            stats.sent += 1
            try:
                return await _with_timeout(backend.generate(reqs), timeout)
            except TransientError as e:
                if attempt > self.settings.max_retries:
                    raise
                await asyncio.sleep(self._backoff(e, attempt))

    def _backoff(self, exc: Exception, attempt: int) -> float:
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(float(retry_after), self.settings.backoff_max_s)
        base = self.settings.backoff_base_s * (2 ** (attempt - 1))
        return min(self.settings.backoff_max_s, base) * (0.5 + random.random() / 2)

    def _batches(self, backend, requests, misses: list[int]) -> list[list[int]]:
        """Group cache misses into backend calls."""
        if getattr(backend, "supports_n", False):
            # distinct sample indices of one request: one n>1 call, choice k -> k-th smallest index
            if not any(requests[i].sample_index for i in misses):
                # one sample each (the misses have distinct cache keys): no group to find, no key to hash
                return [[i] for i in misses]
            groups: dict[str, list[int]] = {}
            for i in misses:
                groups.setdefault(requests[i].group_key(), []).append(i)
            return [sorted(g, key=lambda i: requests[i].sample_index) for g in groups.values()]
        size = max(1, getattr(backend, "max_batch", 1))
        if size > 1 and hasattr(backend, "sort_key"):
            # similar lengths together: less padding, same results (rows are independent)
            misses = sorted(misses, key=lambda i: backend.sort_key(requests[i]))
        return [misses[j:j + size] for j in range(0, len(misses), size)]

    def reask_same(self, req):
        """The generic re-ask after a parse failure: the same prompt as a new call (``attempt``
        is part of the cache key); a greedy request is re-asked at ``reask_temperature``."""
        changes = {"attempt": req.attempt + 1}
        if getattr(req, "temperature", None) == 0.0:
            changes["temperature"] = self.settings.reask_temperature
        return dataclasses.replace(req, **changes)

    async def run_parsed(self, backend, requests: Sequence[Any], parse: Callable[[Any, int], Any],
                         on_final: Callable[[int, Any, Any, int], None] | None = None,
                         reask: Callable[[int, Any, Any, Any], Any] | None = None):
        """Run, parse, and re-ask parse failures up to ``parse_retries`` times.

        ``parse(result, index)`` returns an object with ``ok``. Returns a list of
        (result, parsed, attempts). ``reask(index, request, result, parsed)`` gives the next
        request after a parse failure, or None to stop there; by default :meth:`reask_same`.
        """
        reask = reask or (lambda i, req, res, parsed: self.reask_same(req))
        final: list[Any] = [None] * len(requests)
        pending = list(range(len(requests)))
        current = list(requests)
        for attempt in range(self.settings.parse_retries + 1):
            if not pending:
                break
            last = attempt == self.settings.parse_retries
            retry: list[int] = []

            def handle(j: int, res, pending=pending, retry=retry, attempt=attempt, last=last) -> None:
                # called as each result arrives, so finished work is recorded before a crash
                i = pending[j]
                parsed = parse(res, i) if res.error is None else None
                if res.error is None and not parsed.ok and not last:
                    nxt = reask(i, current[i], res, parsed)
                    if nxt is not None:
                        current[i] = nxt
                        retry.append(i)
                        return
                final[i] = (res, parsed, attempt + 1)
                if on_final:
                    on_final(i, res, parsed, attempt + 1)

            await self.run(backend, [current[i] for i in pending], on_result=handle)
            pending = sorted(retry)
        return final

    def close(self) -> None:
        self.cache.close()
