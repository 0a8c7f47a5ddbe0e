"""The ``scripted`` backend: deterministic instant answers, no model.

User-facing as a dry run: ``backend: scripted`` in a config runs every step of a study
(build, generate, judge, aggregate, report) in seconds, to check a config end to end
before paying for real calls. Tests and benchmarks use it for the same reason: the
call layer, the store and the HTTP path are exercised without depending on a model.
"""
from __future__ import annotations

import hashlib
import math

from harness.backends.base import Backend, GenRequest, GenResult, TokenLogprob


def _digest(req: GenRequest) -> int:
    text = str(req.messages if req.messages is not None else req.prompt)
    return int(hashlib.sha256(f"{text}|{req.sample_index}|{req.attempt}".encode()).hexdigest()[:8], 16)


def judge_like_answer(req: GenRequest) -> str:
    """A judge-shaped answer with a rating derived from the request content."""
    k = _digest(req) % 10 + 1
    return f"The answer is adequate. Rating: [[{k}]]"


class ScriptedBackend(Backend):
    name = "scripted"
    max_batch = 16
    default_concurrency = 4
    local = True

    def __init__(self, model: str = "scripted", answer=judge_like_answer, **options):
        super().__init__(model, **options)
        self.answer = answer
        self.calls = 0

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        self.calls += 1
        out = []
        for r in requests:
            text = self.answer(r)
            lps = None
            if r.logprobs or r.top_logprobs:
                # a peaked distribution over digits, centred on a content-derived digit
                centre = _digest(r) % 9 + 1
                weights = {str(d): math.exp(-abs(d - centre)) for d in range(1, 10)}
                z = sum(weights.values())
                top = sorted(((t, math.log(w / z)) for t, w in weights.items()), key=lambda x: -x[1])
                top = top[: max(1, r.top_logprobs or 1)]
                lps = [TokenLogprob(top[0][0], top[0][1], top)]
            out.append(GenResult(text=text, finish_reason="stop", prompt_tokens=len(str(r.messages or r.prompt)) // 4,
                                 completion_tokens=max(1, len(text) // 4), logprobs=lps))
        return out
