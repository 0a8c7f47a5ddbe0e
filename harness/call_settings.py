"""``calls:`` of a run config: concurrency, rate, retries, timeouts, prices, a cost limit."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class CallSettings:
    concurrency: int | None = None  # None: the backend's default
    rps: float | None = None  # requests per second; None: unlimited
    max_retries: int = 6
    timeout_s: float | None = 120.0  # per HTTP call; local backends ignore it
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    parse_retries: int = 2
    reask_temperature: float = 0.7  # a re-ask of a greedy judge would repeat itself
    # model id -> {"prompt": $ per 1M tokens, "completion": $ per 1M tokens}
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    max_cost: float | None = None  # stop sending (cleanly, resumable) once this much was spent
    progress: bool = False

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "calls") -> "CallSettings":
        """Typed and range-checked; an error names the field (``calls.rps: ...``)."""
        if d is not None and not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
        for name, (kind, lo, optional) in _CHECKS.items():
            if name in d:
                d[name] = _checked(d[name], kind, lo, optional, f"{where}.{name}")
        if "prices" in d:
            d["prices"] = _checked_prices(d["prices"], f"{where}.prices")
        return cls(**d)


# field -> (type, exclusive lower bound or inclusive minimum, may be null)
_CHECKS = {
    "concurrency": (int, ("min", 1), True),
    "rps": (float, ("gt", 0), True),
    "max_retries": (int, ("min", 0), False),
    "timeout_s": (float, ("gt", 0), True),
    "backoff_base_s": (float, ("min", 0), False),
    "backoff_max_s": (float, ("min", 0), False),
    "parse_retries": (int, ("min", 0), False),
    "reask_temperature": (float, ("min", 0), False),
    "max_cost": (float, ("min", 0), True),
    "progress": (bool, None, False),
}


def _checked(v, kind, bound, optional: bool, where: str):
    if v is None and optional:
        return None
    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{where}: must be true or false, got {v!r}")
        return v
    if kind is int and not (numeric and float(v).is_integer()):
        raise ValueError(f"{where}: must be an integer, got {v!r}")
    if kind is float and not numeric:
        raise ValueError(f"{where}: must be a number, got {v!r}")
    v = kind(v)
    op, lo = bound
    if (op == "gt" and not v > lo) or (op == "min" and v < lo):
        raise ValueError(f"{where}: must be {'>' if op == 'gt' else '>='} {lo}, got {v!r}")
    return v


def _checked_prices(prices, where: str) -> dict:
    if not isinstance(prices, dict):
        raise ValueError(f"{where}: expected a mapping model -> {{prompt, completion}}")
    for model, p in prices.items():
        if not isinstance(p, dict) or set(p) - {"prompt", "completion"}:
            raise ValueError(f"{where}.{model}: expected {{prompt: $/1M tokens, completion: $/1M tokens}}")
        for k, v in p.items():
            _checked(v, float, ("min", 0), False, f"{where}.{model}.{k}")
    return prices
