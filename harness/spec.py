"""How a completion is generated: the settings a task asks for and a config may override.

Checked when the config is loaded (type and range, the field named), so a bad setting
fails before a run directory exists.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class GenerationSpec:
    """How a task wants its completions generated."""

    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float | None = None
    n_samples: int = 1
    chat: bool = True  # False: plain continuation of turns[0] (RealToxicityPrompts)
    stop: list[str] | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def check_generation(d, where: str) -> dict:
    """``d`` (overrides of a GenerationSpec) checked field by field; errors name ``where.field``."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(GenerationSpec)}
    for k, v in d.items():
        at = f"{where}.{k}"
        if k not in known:
            raise ValueError(f"{at}: unknown generation setting; known: {sorted(known)}")
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        if k in ("max_tokens", "n_samples") and not (num and float(v).is_integer() and v >= 1):
            raise ValueError(f"{at}: must be a positive integer, got {v!r}")
        if k == "temperature" and not (num and v >= 0):
            raise ValueError(f"{at}: must be a number >= 0, got {v!r}")
        if k == "top_p" and not (num and 0 < v <= 1):
            raise ValueError(f"{at}: must be a number in (0, 1], got {v!r}")
        if k == "repetition_penalty" and v is not None and not (num and v > 0):
            raise ValueError(f"{at}: must be a number > 0 or null, got {v!r}")
        if k == "chat" and not isinstance(v, bool):
            raise ValueError(f"{at}: must be true or false, got {v!r}")
        if k == "stop" and v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            raise ValueError(f"{at}: must be a list of strings or null, got {v!r}")
    return d
