"""The records that flow through the harness: build -> generate -> judge -> aggregate.

Keys chain by content, so nothing stale is ever reused:
- Instance key = task / id / hash of what a model and a judge are shown;
- Completion key = Instance key / model / generation-config hash / sample index;
- Judgment key = Completion key / judge / judge-config hash / criterion (the criterion holds
  the judge's own sample index, e.g. ``rubric0/run2``); a pairwise baseline is part of the
  instance's content (its answer) and named in the key;
- Score key = Completion key / scorer / version / criterion.
A changed system message gives a new instance key, hence new completions and judgments;
a changed generation setting gives new completions, hence new judgments.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON form of ``obj`` (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


class Record:
    """Mixin: JSON round trip and a content key."""

    kind: str = "record"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def key(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class Instance(Record):
    """One benchmark item: what a model is asked, plus what a judge needs."""

    task: str
    id: str
    turns: list[str]
    source: str = ""
    system: str | None = None
    reference: list[str] | None = None  # reference answer per turn (or one for all)
    rubrics: list[dict] | None = None  # [{criteria, score_descriptions{"1".."5"}}]
    category: str = ""
    metadata: dict = field(default_factory=dict)
    kind = "instance"

    @property
    def content_hash(self) -> str:
        return stable_hash({"system": self.system, "turns": self.turns, "reference": self.reference,
                            "rubrics": self.rubrics, "category": self.category, "source": self.source,
                            "metadata": self.metadata})

    @property
    def key(self) -> str:
        return f"{self.task}/{self.id}/{self.content_hash}"


@dataclass
class Completion(Record):
    """A model's answer to one instance (all turns), for one sample index."""

    task: str
    instance_id: str
    model: str
    texts: list[str]
    sample_index: int = 0
    instance_key: str = ""  # the Instance.key this answers (chains the content hash)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    backend: str = ""
    gen_config_hash: str = ""
    status: str = "ok"  # ok | error
    error: str | None = None
    metadata: dict = field(default_factory=dict)
    kind = "completion"

    @property
    def key(self) -> str:
        base = self.instance_key or f"{self.task}/{self.instance_id}"
        return f"{base}/{self.model}/{self.gen_config_hash}/{self.sample_index}"

    @property
    def text(self) -> str:
        return self.texts[-1] if self.texts else ""


@dataclass
class Judgment(Record):
    """A judge's verdict on a completion (or a pair, for pairwise judges)."""

    task: str
    instance_id: str
    model: str
    judge: str  # judge name, e.g. "mt_bench_single"
    judge_model: str
    judge_config_hash: str
    criterion: str  # e.g. "turn1", "rubric0/run1", "game1"
    completion_key: str = ""
    baseline: str | None = None  # pairwise: the other model
    position: str | None = None  # pairwise: which side the model was shown on
    # the rendered judge request (messages); the store keeps it once, by hash, in ``prompt_ref``
    prompt: list[dict] | None = None
    prompt_ref: str | None = None
    raw: str | None = None  # the judge's raw output
    value: Any = None  # parsed value (number, verdict string, ...)
    parse_status: str = "ok"  # ok | parse_failure | error
    method: str = "text"  # text | logprob
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    details: dict = field(default_factory=dict)
    kind = "judgment"

    @property
    def key(self) -> str:
        base = self.completion_key or f"{self.task}/{self.instance_id}/{self.model}"
        return f"{base}/{self.judge}/{self.judge_config_hash}/{self.criterion}/{self.baseline or ''}"


@dataclass
class Score(Record):
    """A number from a reward model or classifier for one completion."""

    task: str
    instance_id: str
    model: str
    scorer: str
    scorer_version: str
    value: float | None
    completion_key: str = ""
    criterion: str = ""
    sample_index: int = 0
    status: str = "ok"
    details: dict = field(default_factory=dict)
    kind = "score"

    @property
    def key(self) -> str:
        base = self.completion_key or f"{self.task}/{self.instance_id}/{self.model}/{self.sample_index}"
        return f"{base}/{self.scorer}/{self.scorer_version}/{self.criterion}"


RECORD_TYPES: dict[str, type[Record]] = {
    "instance": Instance,
    "completion": Completion,
    "judgment": Judgment,
    "score": Score,
}
