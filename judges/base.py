"""A judge turns (instance, completion) into judge requests and parses the answers.

Judges never know about files or HTTP: they build ``JudgeCall``s (messages plus
how to read the answer) and parse text or logprobs into values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from harness.backends.base import GenResult
from harness.records import Completion, Instance


@dataclass
class Parsed:
    value: Any
    ok: bool
    reason: str = ""


@dataclass
class JudgeCall:
    """One request to the judge model and how its answer is read."""

    criterion: str  # e.g. "turn1", "rubric2/run0", "game2"
    messages: list[dict]
    max_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    # repeated judge runs of the same prompt (e.g. JANUS averages 3) are distinct samples
    sample_index: int = 0
    baseline: str | None = None
    position: str | None = None
    # logprob scoring: the judge's answer is continued from ``prefix`` for one token and
    # the value is read from the top logprobs over ``allowed`` tokens
    logprob_prefix: str | None = None
    allowed: list[str] | None = None
    top_logprobs: int = 20
    # ask for logprobs of the generated tokens even without a prefix (AlpacaEval's weighted judge)
    want_logprobs: bool = False
    meta: dict = field(default_factory=dict)


class Judge:
    """Base class. ``calls`` builds requests; ``parse`` reads text answers."""

    name = "judge"
    version = "1"
    #: "text" (parse printed output) or "logprob" (read token probabilities)
    method = "text"

    def __init__(self, options: dict | None = None, data_dir=None):
        self.options = dict(options or {})
        # the run's data directory (the run context): judges read their prompt files from it
        self.data_dir = data_dir
        # the run config's judge.method ("text" | "logprob") arrives as an option
        self.method = self.options.pop("method", self.method)

    def config(self) -> dict:
        """What identifies this judge's behaviour (hashed into judgment keys)."""
        return {"name": self.name, "version": self.version, "method": self.method, **self.options}

    def calls(self, instance: Instance, completion: Completion, **context) -> list[JudgeCall]:
        raise NotImplementedError

    def parse(self, text: str, call: JudgeCall) -> Parsed:
        raise NotImplementedError

    def followup(self, call: JudgeCall, text: str) -> JudgeCall | None:
        """After a parse failure: the next call, ``call`` itself to ask the same prompt again
        (the call layer's generic re-ask), or None to record the failure now."""
        return call

    def transcript(self, call: JudgeCall, text: str) -> str:
        """The judge's raw output as recorded (a judge with follow-ups joins the turns)."""
        return text

    def parse_result(self, result: GenResult, call: JudgeCall) -> Parsed:
        if call.logprob_prefix is not None:
            return parse_logprob_choice(result, call.allowed or [])
        return self.parse(result.text, call)


def parse_logprob_choice(result: GenResult, allowed: list[str], reduce: str = "mean") -> Parsed:
    """Read a score from the first generated token's top logprobs over ``allowed`` tokens.

    ``mean`` (default) returns the probability-weighted score (G-Eval style), which
    separates answers a small judge would all print the same digit for; ``argmax``
    returns the most probable token. The distribution is kept in the reason string.
    """
    if not result.logprobs:
        return Parsed(None, False, "no logprobs returned")
    top = result.logprobs[0].top or [(result.logprobs[0].token, result.logprobs[0].logprob)]
    probs: dict[str, float] = {}
    for tok, lp in top:
        t = tok.strip()
        if t in allowed:
            probs[t] = probs.get(t, 0.0) + math.exp(lp)
    if not probs:
        return Parsed(None, False, "no allowed token among top logprobs")
    total = sum(probs.values())
    dist = {k: v / total for k, v in probs.items()}
    best = max(dist, key=dist.get)
    try:
        mean = sum(float(k) * p for k, p in dist.items())
    except ValueError:
        mean = None
    value = best if reduce == "argmax" else mean
    try:
        value = float(value) if reduce == "argmax" else value
    except (TypeError, ValueError):
        pass
    return Parsed(value, True, f"logprob dist={ {k: round(v, 4) for k, v in dist.items()} } mean={mean}")
