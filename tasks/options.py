"""Typed ``tasks[].options``: a task declares its options as a dataclass; unknown keys are refused
and given values are type-checked, each error naming ``tasks[<task>].options.<key>``."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


@dataclasses.dataclass
class CommonOptions:
    """Options every generated-and-scored task takes (read by the engine)."""

    generation: dict = dataclasses.field(default_factory=dict)  # overrides of the generation spec
    scorer: str | None = None  # a classifier (harness.scorers, classifier:NAME) scoring the completions
    scorer_options: dict = dataclasses.field(default_factory=dict)


def _accepts(tp, value) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(t, value) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is not None:
        tp = origin
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def parse_options(cls, options: dict, task: str):
    """``options`` as an instance of the dataclass ``cls``, or a ValueError naming the field."""
    where = f"tasks[{task}].options"
    hints = typing.get_type_hints(cls)
    for key, value in options.items():
        if key not in hints:
            raise ValueError(f"{where}.{key}: unknown option; known: {', '.join(sorted(hints))}")
        if not _accepts(hints[key], value):
            raise ValueError(f"{where}.{key}: expected {hints[key]}, got {type(value).__name__} {value!r}")
    return cls(**options)
