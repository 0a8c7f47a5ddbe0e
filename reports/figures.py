"""The paper's figures drawn from the paper's tables (``reports.tables``): Multifaceted Bench per
source (bars with 95% CIs) and per dimension (radar). Style, sizes and PNG+SVG output: ``reports.plots``.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from reports import plots
from reports.plots import PAGE, _t, plt

RADAR_MODELS = 8  # more polygons than this cannot be told apart


def _ci_err(df: pd.DataFrame, col: str) -> np.ndarray:
    v = df[col].to_numpy(float)
    lo = df.get(f"{col}_lower", pd.Series(np.nan, index=df.index)).to_numpy(float)
    hi = df.get(f"{col}_upper", pd.Series(np.nan, index=df.index)).to_numpy(float)
    return np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0)


def source_bars(df: pd.DataFrame, path) -> Path | None:
    """One panel per source (and the average): each model's mean with its 95% CI bar, on one x scale;
    models share the y axis."""
    measures = df.attrs.get("measures", [])
    if df.empty or not measures:
        return None
    cols = min(len(measures), 6)
    rows = math.ceil(len(measures) / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(PAGE, rows * (0.13 * len(df) + 0.9)), sharey=True, squeeze=False)
    y = np.arange(len(df))
    finite = df[[c for m in measures for c in (m, f"{m}_lower", f"{m}_upper") if c in df]].to_numpy(float)
    lo, hi = np.nanmin(finite), np.nanmax(finite)
    pad = 0.05 * (hi - lo or 1.0)
    for ax, m in zip(axs.ravel(), measures):
        ok = df[m].notna().to_numpy()
        # a point and its CI bar, not a filled bar: the common axis does not start at the scale's floor,
        # and a bar's length would then overstate the differences
        ax.errorbar(df[m].to_numpy(float)[ok], y[ok], xerr=_ci_err(df, m)[:, ok], fmt="o", markersize=3,
                    color="#0072B2", ecolor="#333333", elinewidth=0.8, capsize=1.5)
        ax.set_title("\n".join(textwrap.wrap(_t(m), 16)), fontsize=7)
        ax.set_xlim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)  # a common scale across panels
        ax.grid(alpha=0.3)
    for ax in axs.ravel()[len(measures):]:
        ax.axis("off")
    axs[0, 0].set_yticks(y, [_t(m) for m in df.index])
    axs[0, 0].invert_yaxis()
    fig.supxlabel("mean rubric score (1–5), 95% CI", fontsize=7)
    fig.suptitle(_t(df.attrs.get("title", "")), fontsize=8)
    return plots._save(fig, path)


def _radar(df: pd.DataFrame, path, title: str) -> Path | None:
    spokes = [m for m in df.attrs.get("measures", []) if not m.startswith("Average")]
    if df.empty or len(spokes) < 3:
        return None
    shown = df.head(RADAR_MODELS)
    values = {m: {d: float(r[d]) for d in spokes if pd.notna(r[d])} for m, r in shown.iterrows()}
    if len(df) > len(shown):
        title += f"\n(first {len(shown)} of {len(df)} models, leaderboard order)"
    return plots.radar(values, title, path, axes_order=spokes, keep_order=True)


def dimension_radar(df: pd.DataFrame, path) -> Path | None:
    """Mean score per rubric dimension, one polygon per model (the first ``RADAR_MODELS`` in table order;
    the title says when models are left out)."""
    return _radar(df, path, "Multifaceted Bench by dimension")


def source_radar(df: pd.DataFrame, path) -> Path | None:
    """Mean score per source, as ``dimension_radar``."""
    return _radar(df, path, "Multifaceted Bench by source")
