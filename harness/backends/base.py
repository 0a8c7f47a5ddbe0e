"""What every backend receives and returns.

A backend turns a batch of ``GenRequest`` into ``GenResult``; caching, limits,
retries and accounting are the call layer's job (``harness.calls``), not the
backend's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from harness.records import stable_hash


@dataclass
class GenRequest:
    """One model call. ``messages`` for chat, ``prompt`` for plain completion."""

    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    # Chat only: continue the final assistant message instead of opening a new turn
    # (vLLM's chat extension of the same name). Used for logprob scoring.
    continue_final_message: bool = False
    seed: int | None = None
    sample_index: int = 0
    # Re-ask index after a parse failure: part of the cache key so a re-ask is a new call.
    attempt: int = 0
    # Token-level requests (the lm-eval bridge tokenizes exactly as lm-eval does): generate from
    # ``prompt_tokens``; with ``continuation_tokens`` set, score them instead of generating
    # (the log-probability of the continuation given the prompt tokens, and whether greedy
    # decoding would produce it).
    prompt_tokens: list[int] | None = None
    continuation_tokens: list[int] | None = None
    # Structured generation: the answer must be JSON matching this schema (constrained decoding
    # in ``hf``/``vllm``, ``response_format`` in ``openai``). Callers still validate the text.
    json_schema: dict | None = None

    @property
    def is_loglikelihood(self) -> bool:
        return self.continuation_tokens is not None

    def content(self) -> dict:
        """Everything that determines the answer (not transport settings)."""
        # a shallow dict: the same JSON as asdict() (hence the same keys) without copying messages
        d = {f.name: getattr(self, f.name) for f in _FIELDS}
        # fields added later are left out while unset, so older cache keys stay valid
        for name in _OPTIONAL_FIELDS:
            if d[name] is None:
                del d[name]
        return d

    def group_key(self) -> str:
        """Same content except the sample index: such requests can share one n>1 call."""
        d = self.content()
        d.pop("sample_index")
        return stable_hash(d, 32)

    def cache_key(self, model_id: str) -> str:
        return stable_hash({"model": model_id, **self.content()}, 40)


_FIELDS = fields(GenRequest)
_OPTIONAL_FIELDS = ("prompt_tokens", "continuation_tokens", "json_schema")


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class GenResult:
    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    latency_s: float = 0.0
    cost: float = 0.0
    cached: bool = False
    error: str | None = None  # set when the call failed after all retries
    # loglikelihood requests: sum of the continuation tokens' log-probabilities, and whether
    # each continuation token was the argmax
    loglikelihood: float | None = None
    is_greedy: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GenResult":
        d = dict(d)
        if d.get("logprobs") is not None:
            d["logprobs"] = [TokenLogprob(t["token"], t["logprob"], [tuple(x) for x in t.get("top", [])])
                             for t in d["logprobs"]]
        return cls(**d)


class TransientError(Exception):
    """A failure worth retrying (429, 5xx, timeout, malformed response)."""

    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


class Backend:
    """Base class. Subclasses set ``name`` and implement ``generate``."""

    name = "base"
    #: how many requests one ``generate`` call may take (1 for HTTP backends)
    max_batch: int = 1
    #: whether requests differing only in sample_index may be merged into one n>1 call
    supports_n: bool = False
    #: how many ``generate`` calls may run at once
    default_concurrency: int = 1
    #: whether ``generate`` answers loglikelihood requests (``GenRequest.continuation_tokens``)
    supports_loglikelihood: bool = False

    def __init__(self, model: str, **options: Any):
        self.model = model
        self.options = options

    @property
    def model_id(self) -> str:
        """Identity used in cache keys: what model answers, not where it lives."""
        return f"{self.name}:{self.model}"

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        raise NotImplementedError

    def check_json_schema(self, schema: dict) -> None:
        """Raise ``ValueError`` naming the schema if this backend cannot honour it (called by
        builders before any generation). Backends that constrain decoding compile it here."""

    def close(self) -> None:
        pass
