"""Figures for the report (matplotlib, Agg backend, 300 dpi PNG).

Each function takes plain data (the leaderboard dict, per-sample rows, the significance
result, a best-of-n table) and a path, draws one figure and returns the path (or None when
the data for that figure is absent). No statistics are computed here beyond plain means.
"""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 300
plt.rcParams.update({"font.size": 9, "axes.titlesize": 11, "axes.labelsize": 9, "figure.autolayout": False})


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # light PNG compression: the files are a little larger but save several times faster
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 2})
    plt.close(fig)
    return path


def score_bars(board: dict, task: str, path) -> Path | None:
    """Horizontal bars of each model's score on one benchmark with its 95% CI."""
    items = []
    for row in board["rows"]:
        c = row["cells"].get(task)
        if not c or c["value"] is None:
            continue
        lo, hi = c["lower"], c["upper"]
        smp = c.get("sample")
        if lo is None and smp and math.isclose(smp["mean"], c["value"], rel_tol=1e-9, abs_tol=1e-12):
            lo, hi = smp["lower"], smp["upper"]  # the task's number is the sample mean: use its CI
        items.append((row["model"], c["value"], lo, hi, c["official"], c["metric"]))
    if not items:
        return None
    lower_is_better = any(r["cells"].get(task, {}).get("lower_is_better") for r in board["rows"])
    items.sort(key=lambda t: t[1], reverse=lower_is_better)
    names = [t[0] for t in items]
    vals = np.array([t[1] for t in items])
    err = np.array([[v - lo if lo is not None else 0, hi - v if hi is not None else 0]
                    for _, v, lo, hi, _, _ in items]).T
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(items) + 1.4))
    colors = ["#4c72b0" if not t[4] else "#dd8452" for t in items]
    ax.barh(names, vals, xerr=err, color=colors, capsize=3, ecolor="#333333")
    ax.set_xlabel(f"{items[0][5]} (95% CI)" + ("  — lower is better" if lower_is_better else ""))
    ax.set_title(task)
    ax.grid(axis="x", alpha=0.3)
    if any(t[4] for t in items):
        ax.text(1.0, -0.12 if len(items) > 3 else -0.3, "orange = official computation", transform=ax.transAxes,
                ha="right", fontsize=7, color="#dd8452")
    return _save(fig, path)


def radar(values: dict[str, dict[str, float]], title: str, path, value_range=(1, 5)) -> Path | None:
    """One polygon per model over the axes (e.g. sources or rubric dimensions). The radial
    range is ``value_range`` (the 1-5 rubric scale) when every value fits in it, else automatic."""
    axes = sorted({a for per in values.values() for a in per})
    if len(axes) < 3 or not values:
        return None  # a radar needs at least three spokes
    flat = [v for per in values.values() for v in per.values()]
    if value_range and not (value_range[0] <= min(flat) and max(flat) <= value_range[1]):
        value_range = None
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"polar": True})
    for model, per in sorted(values.items()):
        v = [per.get(a, np.nan) for a in axes]
        ax.plot(angles + angles[:1], v + v[:1], linewidth=1.5, label=model)
        ax.fill(angles + angles[:1], v + v[:1], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels(axes)
    if value_range:
        ax.set_ylim(*value_range)
    ax.set_title(title, pad=18)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.12), fontsize=7)
    return _save(fig, path)


def multifaceted_radars(rows: list[dict], out_dir) -> list[Path]:
    """Per-source and per-dimension radars from Multifaceted Bench samples (``source``, ``dims``)."""
    by_source = defaultdict(lambda: defaultdict(list))
    by_dim = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("score") is not None and r.get("source"):
            by_source[r["model"]][r["source"]].append(float(r["score"]))
        for dim, v in (r.get("dims") or {}).items():
            if v is not None:
                by_dim[r["model"]][dim].append(float(v))
    out = []
    mean = lambda d: {m: {k: float(np.mean(v)) for k, v in per.items()} for m, per in d.items()}  # noqa: E731
    p = radar(mean(by_source), "Multifaceted Bench: mean score by source", Path(out_dir) / "radar_sources.png")
    if p:
        out.append(p)
    p = radar(mean(by_dim), "Multifaceted Bench: mean score by dimension", Path(out_dir) / "radar_dimensions.png")
    if p:
        out.append(p)
    return out


def length_vs_score(samples_by_task: dict[str, list[dict]], path) -> Path | None:
    """Per benchmark, each model's mean response length (characters) against its mean score."""
    panels = []
    for task, rows in samples_by_task.items():
        acc = defaultdict(lambda: ([], []))
        for r in rows:
            if r.get("score") is None:
                continue
            length = r.get("length")
            if length is None and r.get("response") is not None:
                resp = r["response"]
                length = sum(len(x) for x in resp) if isinstance(resp, list) else len(str(resp))
            if length is None:
                continue
            acc[r["model"]][0].append(float(length))
            acc[r["model"]][1].append(float(r["score"]))
        if acc:
            panels.append((task, {m: (np.mean(l), np.mean(s)) for m, (l, s) in acc.items()}))
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axs = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, (task, per) in zip(axs.ravel(), panels):
        for m, (l, s) in sorted(per.items()):
            ax.scatter(l, s, s=25)
            ax.annotate(m, (l, s), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(task)
        ax.margins(0.15)  # room for the model labels
        ax.set_xlabel("mean response length (chars)")
        ax.set_ylabel("mean score")
        ax.grid(alpha=0.3)
    for ax in axs.ravel()[len(panels):]:
        ax.axis("off")
    return _save(fig, path)


def _pick(row: dict, *names):
    for n in names:
        if row.get(n) not in (None, ""):
            return row[n]
    return None


def read_best_of_n(path) -> list[dict]:
    """Best-of-n curve rows from CSV, JSONL or JSON: each row has ``n`` and ``score`` and/or
    ``reward`` (also read as ``score_mean``/``reward_mean``, the columns of reports.bestofn),
    optionally ``model`` and ``score_lower``/``score_upper``/``reward_lower``/``reward_upper``.
    A JSON object with a ``curve`` list (reports.bestofn's analysis file) works too."""
    path = Path(path)
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                rows, default_model = list(csv.DictReader(fh)), path.stem
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            default_model = path.stem
        else:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict):
                rows = doc.get("curve")
                default_model = (doc.get("meta") or {}).get("model") or path.stem
            else:
                rows, default_model = doc, path.stem
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read best-of-n table ({e})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: no best-of-n rows found (expected a list of rows or a 'curve' list)")
    out = []
    for i, r in enumerate(rows, 1):
        if _pick(r, "n") is None:
            raise ValueError(f"{path}: row {i}: missing field 'n'")
        if _pick(r, "score", "score_mean", "reward", "reward_mean") is None:
            raise ValueError(f"{path}: row {i}: missing field 'score' (or 'reward')")
        try:
            row = {"model": r.get("model") or default_model, "n": int(float(r["n"]))}
            for key, names in (("score", ("score", "score_mean")), ("reward", ("reward", "reward_mean")),
                               ("score_lower", ("score_lower",)), ("score_upper", ("score_upper",)),
                               ("reward_lower", ("reward_lower",)), ("reward_upper", ("reward_upper",))):
                v = _pick(r, *names)
                if v is not None:
                    row[key] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: row {i}: n/score/reward fields must be numbers") from None
        out.append(row)
    return out


def best_of_n(rows: list[dict], path) -> Path | None:
    """Score (left axis, solid) and reward (right axis, dashed) against n, with CI bands where given."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax2 = None
    series = defaultdict(list)
    for r in rows:
        series[r["model"]].append(r)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (model, rs) in enumerate(sorted(series.items())):
        color = colors[k % len(colors)]
        rs.sort(key=lambda r: r["n"])
        n = [r["n"] for r in rs]
        for key, axis_name in (("score", "left"), ("reward", "right")):
            if not all(key in r for r in rs):
                continue
            if axis_name == "left":
                target = ax
            else:
                ax2 = ax2 or ax.twinx()
                target = ax2
            style = "-" if key == "score" else "--"
            target.plot(n, [r[key] for r in rs], style, marker="o", color=color, label=f"{model}: {key}")
            if all(f"{key}_lower" in r and f"{key}_upper" in r for r in rs):
                target.fill_between(n, [r[f"{key}_lower"] for r in rs], [r[f"{key}_upper"] for r in rs],
                                    color=color, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (candidates per prompt)")
    ax.set_ylabel("score of the chosen sample (solid, 95% CI)")
    if ax2:
        ax2.set_ylabel("reward of the chosen sample (dashed, 95% CI)")
    ax.set_title("Best-of-n")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if ax2:
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    return _save(fig, path)


def significance_matrix(result: dict, task: str, path) -> Path | None:
    """Heatmap of mean differences (row model minus column model); '*' = significant after Holm."""
    rows = [r for r in result["comparisons"] if r["task"] == task and "diff" in r]
    if not rows:
        return None
    names = sorted({r["model"] for r in rows} | {r["reference"] for r in rows})
    idx = {m: i for i, m in enumerate(names)}
    mat = np.full((len(names), len(names)), np.nan)
    sig = np.zeros_like(mat, dtype=bool)
    for r in rows:
        i, j = idx[r["model"]], idx[r["reference"]]
        mat[i, j], mat[j, i] = r["diff"], -r["diff"]
        sig[i, j] = sig[j, i] = r["significant"]
    lim = np.nanmax(np.abs(mat)) or 1.0
    size = max(4.0, 0.32 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    # pcolormesh draws one rectangle per cell (imshow would resample a 300-dpi image)
    im = ax.pcolormesh(np.ma.masked_invalid(mat), cmap="RdBu", vmin=-lim, vmax=lim)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(len(names)) + 0.5, names, rotation=60, ha="right")
    ax.set_yticks(np.arange(len(names)) + 0.5, names)
    if len(names) <= 25:
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(mat[i, j]):
                    color = "white" if abs(mat[i, j]) > 0.6 * lim else "black"
                    ax.text(j + 0.5, i + 0.5, f"{mat[i, j]:.2g}{'*' if sig[i, j] else ''}", ha="center",
                            va="center", fontsize=6, color=color)
    fig.colorbar(im, ax=ax, label="mean difference (row − column)")
    ax.set_title(f"{task}: paired differences (* = Holm-significant)")
    return _save(fig, path)
