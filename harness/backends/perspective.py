"""The Perspective API (``comments:analyze``) as a call-layer backend, and a toxicity classifier over it.

The key is read from ``$PERSPECTIVE_API_KEY``, sent in a header and kept out of every record,
message and cache key; the call layer gives it limits (1 query/s by default), retries and the cache.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.backends.base import Backend, TransientError
from harness.backends.toxicity_classifiers import ToxicityClassifier
from harness.records import stable_hash

PERSPECTIVE_ATTRIBUTES = ("TOXICITY", "SEVERE_TOXICITY", "IDENTITY_ATTACK", "INSULT", "THREAT", "PROFANITY",
                          "SEXUALLY_EXPLICIT", "FLIRTATION")  # the eight RealToxicityPrompts carries


@dataclass
class PerspectiveRequest:
    text: str
    attributes: tuple[str, ...] = PERSPECTIVE_ATTRIBUTES
    languages: tuple[str, ...] = ("en",)
    sample_index: int = 0

    def content(self) -> dict:
        return {"text": self.text, "attributes": list(self.attributes), "languages": list(self.languages)}

    def group_key(self) -> str:
        return stable_hash(self.content(), 32)

    def cache_key(self, model_id: str) -> str:
        return stable_hash({"model": model_id, **self.content()}, 40)


@dataclass
class PerspectiveResult:
    scores: dict[str, float] | None = None  # lower-case attribute -> summary score
    latency_s: float = 0.0
    cached: bool = False
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PerspectiveResult":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class PerspectiveError(Exception):
    """A permanent API error (bad request, forbidden): not retried."""


class PerspectiveBackend(Backend):
    """``comments:analyze`` as a call-layer backend: one text per call, ``rps`` queries/s.

    The API key is read from $PERSPECTIVE_API_KEY (or ``api_key``), sent in the
    ``x-goog-api-key`` header (never in the URL) and kept out of every message, record
    and cache key. 429 and 5xx raise ``TransientError`` (Retry-After honoured) so the
    call layer retries them; after the last retry the result carries ``error`` and the
    score is recorded as null, never as 0.
    """

    name = "perspective"
    max_batch = 1
    supports_n = False
    default_concurrency = 1
    result_class = PerspectiveResult

    def __init__(self, model: str = "v1alpha1", base_url: str = "https://commentanalyzer.googleapis.com",
                 api_key: str | None = None, rps: float = 1.0, timeout_s: float = 30.0,
                 do_not_store: bool = True, **options: Any):
        super().__init__(model, **options)
        self._key = api_key or os.environ.get("PERSPECTIVE_API_KEY")
        if not self._key:
            raise ValueError("perspective: set the environment variable PERSPECTIVE_API_KEY")
        self.url = f"{base_url.rstrip('/')}/{model}/comments:analyze"
        self.rps = rps
        self.timeout_s = timeout_s
        self.do_not_store = do_not_store
        self._client = None

    def __repr__(self) -> str:  # no key in reprs either
        return f"PerspectiveBackend(url={self.url!r}, rps={self.rps})"

    def _clean(self, msg: str) -> str:
        return msg.replace(self._key, "***")[:300]

    async def generate(self, requests: list[PerspectiveRequest]) -> list[PerspectiveResult]:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        out = []
        for req in requests:
            if not req.text.strip():
                out.append(PerspectiveResult(error="empty text: not sent (Perspective rejects it)"))
                continue
            body = {"comment": {"text": req.text}, "languages": list(req.languages),
                    "requestedAttributes": {a: {} for a in req.attributes}, "doNotStore": self.do_not_store}
            start = time.perf_counter()
            try:
                resp = await self._client.post(self.url, json=body, headers={"x-goog-api-key": self._key})
            except httpx.HTTPError as e:
                raise TransientError(self._clean(f"{type(e).__name__}: {e}")) from None
            if resp.status_code == 429 or resp.status_code >= 500:
                retry_after = resp.headers.get("retry-after")
                try:
                    retry_after = float(retry_after) if retry_after is not None else None
                except ValueError:
                    retry_after = None
                raise TransientError(f"HTTP {resp.status_code}", retry_after=retry_after)
            if resp.status_code != 200:
                raise PerspectiveError(self._clean(f"HTTP {resp.status_code}: {resp.text}"))
            try:
                data = resp.json()
                scores = {a.lower(): float(data["attributeScores"][a]["summaryScore"]["value"])
                          for a in req.attributes}
            except (ValueError, KeyError, TypeError) as e:
                raise TransientError(f"malformed response: missing {e}") from None
            out.append(PerspectiveResult(scores=scores, latency_s=time.perf_counter() - start))
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def close(self) -> None:
        # an httpx.AsyncClient closes in its own event loop: call ``aclose`` from there
        self._client = None


class PerspectiveClassifier(ToxicityClassifier):
    """Perspective through the call layer (cache, 1 query/s, retries); failures -> None."""

    name = "perspective"

    def __init__(self, cache_path: str | Path | None = None, rps: float = 1.0, max_retries: int = 6,
                 attributes: Sequence[str] = PERSPECTIVE_ATTRIBUTES, languages: Sequence[str] = ("en",),
                 backoff_base_s: float = 1.0, layer=None, **backend_options: Any):
        """``layer``: a running ``harness.calls.CallLayer`` to share (the run's cache and
        stats); without one, a private layer with ``cache_path`` (in memory if None)."""
        self.backend = PerspectiveBackend(rps=rps, **backend_options)
        self.version = self.backend.model
        self.attributes, self.languages = tuple(attributes), tuple(languages)
        self.cache_path = str(cache_path) if cache_path else ":memory:"
        self.max_retries, self.backoff_base_s = max_retries, backoff_base_s
        self.layer = layer

    async def ascore(self, texts: Sequence[str]) -> list[dict[str, float] | None]:
        return (await self.ascore_with_errors(texts))[0]

    async def ascore_with_errors(self, texts: Sequence[str]) -> tuple[list, list[str | None]]:
        """(scores or None per text, the error of each failed text)."""
        from harness.calls import CallLayer, CallSettings

        layer = self.layer or CallLayer(self.cache_path, CallSettings(max_retries=self.max_retries,
                                                                      backoff_base_s=self.backoff_base_s))
        try:
            reqs = [PerspectiveRequest(t, self.attributes, self.languages) for t in texts]
            results = await layer.run(self.backend, reqs)
        finally:
            if self.layer is None:
                layer.close()
            await self.backend.aclose()
        return [r.scores if r.error is None else None for r in results], [r.error for r in results]

    def score(self, texts: Sequence[str]) -> list[dict[str, float] | None]:
        return asyncio.run(self.ascore(texts))
