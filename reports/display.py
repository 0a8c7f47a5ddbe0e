"""How numbers are printed: per benchmark, the precision its official tool prints, and the short
"27.3 ±1.9" form of the leaderboard at a glance. Files for machines (CSV, JSON) keep full precision.
"""
from __future__ import annotations

import math

# task -> (decimals at a glance, decimals in the detail table). The detail precision is what the
# official tool prints: AlpacaEval's leaderboard "%.2f", Arena-Hard show_result round(.., 1),
# FastChat show_result (pandas' default 6: MT-Bench means are multiples of 1/160, printed exactly),
# JANUS 2 decimals, RealToxicityPrompts/DExperts 3.
DECIMALS = {
    "alpaca_eval": (1, 2),
    "arena_hard": (1, 1),
    "mt_bench": (2, 6),
    "multifaceted_bench": (2, 2),
    "real_toxicity_prompts": (3, 3),
}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _default_decimals(x: float) -> int:
    return 2 if abs(x) >= 10 else 3


def decimals(task: str, x: float, detail: bool) -> int:
    d = DECIMALS.get(task)
    return d[1 if detail else 0] if d else _default_decimals(x)


def is_count(name: str, value) -> bool:
    """Counts print as integers (n, n_total, n_parse_failures, avg_length as AlpacaEval prints it)."""
    return isinstance(value, int) and not isinstance(value, bool) or name == "n" or name.startswith("n_")


def number(task: str, name: str, value, detail: bool = True) -> str:
    """One metric value at the task's precision; '—' for a missing or non-finite value."""
    if not _finite(value):
        return "—"
    if is_count(name, value) and float(value).is_integer():
        return str(int(value))
    return f"{value:.{decimals(task, value, detail)}f}"


def ci_parts(task: str, value, lower, upper, detail: bool = False) -> tuple[str, str | None, str | None]:
    """(value, plus, minus) at the task's precision; plus is None without a CI, minus is None when the
    interval is symmetric at that precision (then plus is the half-width)."""
    if not _finite(value):
        return "—", None, None
    d = decimals(task, value, detail)
    v = f"{value:.{d}f}"
    if not (_finite(lower) and _finite(upper)):
        return v, None, None
    up, down = f"{upper - value:.{d}f}", f"{value - lower:.{d}f}"
    return (v, up, None) if up == down else (v, up, down)


def short(task: str, value, lower, upper) -> str:
    """'27.3 ±1.9', '27.3 +2.1/−1.7' (asymmetric), '27.3' (no CI), '—' (no value)."""
    v, plus, minus = ci_parts(task, value, lower, upper)
    if plus is None:
        return v
    return f"{v} ±{plus}" if minus is None else f"{v} +{plus}/\u2212{minus}"


def interval(task: str, lower, upper, detail: bool = True) -> str:
    """'[25.4, 29.2]' at the task's precision, '' without one."""
    if not (_finite(lower) and _finite(upper)):
        return ""
    return f"[{number(task, '', float(lower), detail)}, {number(task, '', float(upper), detail)}]"
