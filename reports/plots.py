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
# figures are drawn at their printed size, so 7-8 pt text stays 7-8 pt in a two-column paper:
# COLUMN wide for one column, PAGE for both
COLUMN, PAGE = 3.4, 7.0
plt.rcParams.update({"font.size": 7, "axes.titlesize": 8, "axes.labelsize": 7, "xtick.labelsize": 6.5,
                     "ytick.labelsize": 6.5, "legend.fontsize": 6, "figure.autolayout": False,
                     "svg.fonttype": "none",  # SVG text stays text: searchable, editable, smaller
                     "svg.hashsalt": "janus-harness",  # fixed element ids: the same figure, the same bytes
                     "axes.prop_cycle": matplotlib.cycler(color=[  # Okabe-Ito: tells apart in colour-blind vision
                         "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"])})


def _t(text) -> str:
    """Text as matplotlib shows it literally: '$' would start mathtext."""
    return str(text).replace("$", r"\$")


def _save(fig, path: Path) -> Path:
    """The figure as PNG (300 dpi) at ``path`` and as SVG beside it; returns the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # light PNG compression: the files are a little larger but save several times faster
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 2})
    fig.savefig(path.with_suffix(".svg"), metadata={"Date": None})  # no timestamp: reproducible bytes
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
    fig, ax = plt.subplots(figsize=(COLUMN, 0.16 * len(items) + 1.0))
    colors = ["#0072B2" if not t[4] else "#E69F00" for t in items]
    ax.barh([_t(n) for n in names], vals, xerr=err, color=colors, capsize=2, ecolor="#333333", error_kw={"lw": 0.8})
    ax.set_xlabel(_t(f"{items[0][5]} (95% CI)") + (" — lower is better" if lower_is_better else ""))
    ax.set_title(_t(task))
    ax.grid(axis="x", alpha=0.3)
    if any(t[4] for t in items):
        ax.set_title("orange = official computation", loc="right", fontsize=6, color="#E69F00")
    return _save(fig, path)


def radar(values: dict[str, dict[str, float]], title: str, path, value_range=(1, 5), axes_order=None,
          keep_order: bool = False) -> Path | None:
    """One polygon per model over the axes (e.g. sources or rubric dimensions). The radial
    range is ``value_range`` (the 1-5 rubric scale) when every value fits in it, else automatic."""
    axes = list(axes_order) if axes_order else sorted({a for per in values.values() for a in per})
    if len(axes) < 3 or not values:
        return None  # a radar needs at least three spokes
    flat = [v for per in values.values() for v in per.values()]
    if value_range and not (value_range[0] <= min(flat) and max(flat) <= value_range[1]):
        value_range = None
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(COLUMN, COLUMN + 0.15 * len(values)), subplot_kw={"polar": True})
    styles = ["-", "--", "-.", ":"]  # line styles as well as colours: tells models apart in greyscale print
    for k, (model, per) in enumerate(values.items() if keep_order else sorted(values.items())):
        v = [per.get(a, np.nan) for a in axes]
        ax.plot(angles + angles[:1], v + v[:1], linewidth=1.2, linestyle=styles[k // 8 % 4], label=_t(model))
        ax.fill(angles + angles[:1], v + v[:1], alpha=0.06)
    ax.set_xticks(angles)
    ax.set_xticklabels([_t(a).replace(" ", "\n") for a in axes])
    if value_range:
        ax.set_ylim(*value_range)
        ax.set_yticks(np.arange(value_range[0], value_range[1] + 1))
    ax.set_rlabel_position(180 / len(axes))  # the radial scale between two spokes, not on one
    ax.tick_params(axis="y", labelsize=5.5)
    ax.set_title(_t(title), pad=14)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=6, frameon=False)
    return _save(fig, path)


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
    fig, axs = plt.subplots(nrows, cols, figsize=(PAGE / 3 * cols, 2.3 * nrows), squeeze=False)
    for ax, (task, per) in zip(axs.ravel(), panels):
        for m, (l, s) in sorted(per.items()):
            ax.scatter(l, s, s=12)
            ax.annotate(_t(m), (l, s), fontsize=5, xytext=(2, 2), textcoords="offset points")
        ax.set_title(_t(task))
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


def _series_line(ax, n, rs, key, color, style, marker, label):
    ax.plot(n, [r[key] for r in rs], linestyle=style, marker=marker, markersize=3.5, color=color, label=label)
    if all(f"{key}_lower" in r and f"{key}_upper" in r for r in rs):
        ax.fill_between(n, [r[f"{key}_lower"] for r in rs], [r[f"{key}_upper"] for r in rs], color=color,
                        alpha=0.15, linewidth=0)


def _best_of_n_panel(ax, curves: dict, judged: dict, colors: dict) -> None:
    """One panel: judge scores (solid, left axis) and rewards (dashed; right axis when a score line is
    drawn, else left). Axis labels name only the lines drawn."""
    solid, dashed = [], []  # (series, rows, key, what)
    for model, rs in sorted(judged.items()):
        solid.append((model, rs, "score", "judge score"))
    for model, rs in sorted(curves.items()):
        if all("score" in r for r in rs):
            solid.append((model, rs, "score", "oracle score (curve file)"))
        if all("reward" in r for r in rs):
            dashed.append((model, rs, "reward", "reward"))
    for model, rs, key, what in solid:
        _series_line(ax, [r["n"] for r in rs], rs, key, colors[model], "-", "o" if what == "judge score" else "s",
                     f"{_t(model)}: {what}")
    reward_ax = ax.twinx() if solid and dashed else ax
    for model, rs, key, what in dashed:
        _series_line(reward_ax, [r["n"] for r in rs], rs, key, colors[model], "--", "^", f"{_t(model)}: {what}")
    ci = " (95% CI)" if any("score_lower" in r for _, rs, _k, _w in solid for r in rs) else ""
    metric = next((r.get("metric") for _, rs, _k, w in solid if w == "judge score" for r in rs if r.get("metric")), None)
    if solid:
        what = {w for *_, w in solid}
        name = "judge score of the selected answer" if what == {"judge score"} else "score of the selected answer"
        ax.set_ylabel(f"{name}\n{_t(metric) + ', ' if metric and len(what) == 1 else ''}solid{ci}")
    if dashed:
        rci = " (95% CI)" if any("reward_lower" in r for _, rs, _k, _w in dashed for r in rs) else ""
        reward_ax.set_ylabel(f"reward of the selected answer\ndashed{rci}")
    ax.set_xscale("log", base=2)
    ns = sorted({r["n"] for _, rs, _k, _w in solid + dashed for r in rs})
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("n (candidates per prompt, log scale)")
    ax.grid(alpha=0.3)
    handles, names = [], []
    for a in dict.fromkeys([ax, reward_ax]):
        h, l = a.get_legend_handles_labels()
        handles, names = handles + h, names + l
    ax.legend(handles, names, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)


def best_of_n(rows: list[dict], path, judged: list[dict] | None = None) -> Path | None:
    """Best-of-n against n (log scale): the judge's score of the answer each ``@bo<n>`` model selected
    (``judged``, from ``reports.bestofn.judged_points``; solid, left axis) and the reward of the selected
    answer (``rows`` from curve files; dashed), CI bands where given; one panel per benchmark with judged
    points, curve files joined to the panel of their series (else a panel of their own)."""
    judged = judged or []
    if not rows and not judged:
        return None
    curves = defaultdict(list)
    for r in rows:
        curves[r["model"]].append(r)
    panels: dict[str, tuple[dict, dict]] = {}  # title -> (curves, judged series)
    for p in judged:
        panels.setdefault(p["task"], ({}, defaultdict(list)))[1][p["model"]].append(p)
    placed = set()
    for title, (cs, js) in panels.items():
        for model in js:
            if model in curves:
                cs[model] = curves[model]
                placed.add(model)
    rest = {m: rs for m, rs in curves.items() if m not in placed}
    if rest:
        panels["curve files" if panels else ""] = (rest, {})
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = sorted({*curves, *(p["model"] for p in judged)})
    colors = {m: palette[k % len(palette)] for k, m in enumerate(names)}
    entries = max(len(cs) * 2 + len(js) for cs, js in panels.values())  # legend lines under a panel
    cols = min(2, len(panels))  # at most the width of a page
    rows_n = math.ceil(len(panels) / cols)
    fig, axs = plt.subplots(rows_n, cols, figsize=(PAGE / 2 * cols, (2.4 + 0.12 * entries) * rows_n), squeeze=False)
    for ax in axs.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (title, (cs, js)) in zip(axs.ravel(), panels.items()):
        for series in (*cs.values(), *js.values()):
            series.sort(key=lambda r: r["n"])
        _best_of_n_panel(ax, cs, dict(js), colors)
        ax.set_title("Best-of-n" + (f": {_t(title)}" if title else ""))
    return _save(fig, path)


def significance_matrix(result: dict, task: str, path) -> Path | None:
    """Heatmap of mean differences (row model minus column model); '*' = significant after Holm. When every
    comparison has one reference (a baseline), one column: each model against it."""
    rows = [r for r in result["comparisons"] if r["task"] == task and "diff" in r]
    if not rows:
        return None
    refs = sorted({r["reference"] for r in rows})
    one_ref = len(refs) == 1
    names = sorted({r["model"] for r in rows} | ({*refs} if not one_ref else set()))
    cols = refs if one_ref else names
    idx, jdx = {m: i for i, m in enumerate(names)}, {m: j for j, m in enumerate(cols)}
    mat = np.full((len(names), len(cols)), np.nan)
    sig = np.zeros_like(mat, dtype=bool)
    for r in rows:
        i, j = idx[r["model"]], jdx[r["reference"]]
        mat[i, j], sig[i, j] = r["diff"], r["significant"]
        if not one_ref:  # the mirrored cell: column minus row
            mat[idx[r["reference"]], jdx[r["model"]]] = -r["diff"]
            sig[idx[r["reference"]], jdx[r["model"]]] = r["significant"]
    lim = np.nanmax(np.abs(mat)) or 1.0
    height = min(PAGE - 1, max(1.6, 0.16 * len(names) + 1.2))
    width = COLUMN if one_ref else min(PAGE, height + 1)
    fig, ax = plt.subplots(figsize=(width, height))
    # pcolormesh draws one rectangle per cell (imshow would resample a 300-dpi image)
    im = ax.pcolormesh(np.ma.masked_invalid(mat), cmap="RdBu", vmin=-lim, vmax=lim)
    ax.invert_yaxis()
    if not one_ref:
        ax.set_aspect("equal")
    ax.set_xticks(np.arange(len(cols)) + 0.5, [_t(n) for n in cols], rotation=0 if one_ref else 60,
                  ha="center" if one_ref else "right")
    ax.set_yticks(np.arange(len(names)) + 0.5, [_t(n) for n in names])
    if len(names) <= 25:
        small = len(cols) > 12
        for i, j in zip(*np.nonzero(np.isfinite(mat))):
            color = "white" if abs(mat[i, j]) > 0.6 * lim else "black"
            ax.text(j + 0.5, i + 0.5, f"{mat[i, j]:.2g}{'*' if sig[i, j] else ''}", ha="center",
                    va="center", fontsize=4 if small else 6, color=color)
    fig.colorbar(im, ax=ax, label="mean difference, row − column")
    im.colorbar.ax.yaxis.label.set_size(6)
    ax.set_title(_t(f"{task}: paired differences\n(* = Holm-significant)"))
    return _save(fig, path)
