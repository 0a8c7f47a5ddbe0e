"""A task = where instances come from, which judge grades them, how scores aggregate.

Tasks never talk HTTP and never touch the store: the pipeline (``harness.pipeline``)
hands them records and takes records back.
"""
from __future__ import annotations

from typing import Any

from harness.records import Completion, Instance, Judgment, Score
from harness.spec import GenerationSpec  # noqa: F401  (tasks import it from here)


class Task:
    """Base class for benchmarks. Subclasses set ``name`` and override what they need."""

    name = "task"
    #: judge used when the run config names none
    default_judge: str | None = None

    def __init__(self, options: dict[str, Any] | None = None, data_dir=None):
        self.options = dict(options or {})
        self.data_dir = data_dir

    # -- build
    def load(self) -> list[Instance]:
        raise NotImplementedError

    def generation_spec(self) -> GenerationSpec:
        return GenerationSpec(**self.options.get("generation", {}))

    # -- aggregate
    def aggregate(self, instances: list[Instance], completions: list[Completion],
                  judgments: list[Judgment], scores: list[Score]) -> dict[str, dict]:
        """model -> metrics dict. Metrics are plain floats/ints; CIs as *_lower/*_upper."""
        raise NotImplementedError

    def per_sample(self, instances: list[Instance], completions: list[Completion],
                   judgments: list[Judgment], scores: list[Score]) -> list[dict]:
        """Rows for the per-sample JSONL export (one per instance x model)."""
        by_inst = {i.id: i for i in instances}
        rows = []
        for c in completions:
            inst = by_inst.get(c.instance_id)
            js = [j for j in judgments if j.instance_id == c.instance_id and j.model == c.model]
            rows.append({
                "task": self.name, "instance_id": c.instance_id, "model": c.model,
                "sample_index": c.sample_index,
                "system": inst.system if inst else None,
                "turns": inst.turns if inst else None,
                "response": c.texts, "status": c.status,
                "judgments": [{"criterion": j.criterion, "value": j.value, "parse_status": j.parse_status,
                               "method": j.method, "raw": j.raw} for j in js],
            })
        return rows
