"""Figures of the report: what a figure says it draws is drawn, from the numbers it is given;
every figure is written as PNG and SVG."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex

from reports import plots


@pytest.fixture
def captured(monkeypatch):
    """The figures plots.py saves, kept open for inspection."""
    figs = []
    real_save = plots._save

    def keep(fig, path):
        figs.append(fig)
        fig.canvas.draw()
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield figs
    monkeypatch.setattr(plots, "_save", real_save)


def _solid_lines(fig):
    return [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata())]


def _texts(fig) -> str:
    parts = []
    for ax in fig.axes:
        parts += [ax.get_ylabel(), ax.get_xlabel(), ax.get_title()]
        leg = ax.get_legend()
        if leg:
            parts += [t.get_text() for t in leg.get_texts()]
    return " ".join(parts)


def test_best_of_n_names_no_solid_line_it_does_not_draw(captured, tmp_path):
    """A reward-only curve (no oracle): nothing may claim a solid score line."""
    rows = [{"model": "m", "n": n, "reward": r, "reward_lower": r - 0.1, "reward_upper": r + 0.1}
            for n, r in ((1, -0.8), (2, -0.6), (4, -0.4))]
    plots.best_of_n(rows, tmp_path / "bon.png")
    fig = captured[-1]
    if "solid" in _texts(fig) or "score" in _texts(fig).replace("reward", ""):
        assert _solid_lines(fig), f"the figure names a solid score line that is not drawn: {_texts(fig)!r}"
    dashed = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [-0.8, -0.6, -0.4]


def _board(cells_by_model: dict[str, dict[str, dict]]) -> dict:
    return {"tasks": sorted({t for c in cells_by_model.values() for t in c}),
            "rows": [{"model": m, "cells": c} for m, c in cells_by_model.items()]}


def test_best_of_n_draws_the_judge_score_of_the_selected_answers(captured, tmp_path):
    """The judged <base>@bo<n>[<rm>] models are the solid line (with their CIs); the curve file's reward of
    the same pool and reward model is the dashed line in the same panel."""
    from reports import bestofn

    judged = {n: (2.5 + 0.1 * n, 2.3 + 0.1 * n, 2.7 + 0.1 * n) for n in (1, 2, 4)}
    board = _board({f"pool@bo{n}[rm]": {"multifaceted_bench": {"value": v, "lower": lo, "upper": hi, "metric": "score"}}
                    for n, (v, lo, hi) in judged.items()} | {"pool": {"multifaceted_bench": {"value": 9.0}}})
    points = bestofn.judged_points(board)
    assert [(p["model"], p["n"], p["score"]) for p in points] == [("pool__rm", n, judged[n][0]) for n in (1, 2, 4)]
    rows = [{"model": "pool__rm", "n": n, "reward": -1.0 + 0.2 * n} for n in (1, 2, 4)]
    plots.best_of_n(rows, tmp_path / "bon.png", judged=points)
    fig = captured[-1]
    solid = _solid_lines(fig)
    assert len(solid) == 1 and list(solid[0].get_xdata()) == [1, 2, 4]
    assert list(solid[0].get_ydata()) == [judged[n][0] for n in (1, 2, 4)]
    band = [c for ax in fig.axes for c in ax.collections]  # the CI band of the judged line
    lo, hi = band[0].get_paths()[0].vertices[:, 1].min(), band[0].get_paths()[0].vertices[:, 1].max()
    assert (lo, hi) == pytest.approx((judged[1][1], judged[4][2]))
    dashed = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert [list(d.get_ydata()) for d in dashed] == [[r["reward"] for r in rows]]
    assert "judge score" in fig.axes[0].get_ylabel() and "reward" in fig.axes[1].get_ylabel()
    assert fig.axes[0].get_xscale() == "log"


def test_source_bars_show_the_table_values(captured, tmp_path):
    import pandas as pd

    from reports import figures

    df = pd.DataFrame([{"model": "m$1$", "FLASK": 3.2, "FLASK_lower": 3.0, "FLASK_upper": 3.4, "Koala": 2.0,
                        "Koala_lower": 1.5, "Koala_upper": 2.2},
                       {"model": "n", "FLASK": 4.0, "FLASK_lower": 3.9, "FLASK_upper": 4.1, "Koala": float("nan"),
                        "Koala_lower": float("nan"), "Koala_upper": float("nan")}]).set_index("model")
    df.attrs.update(title="by source", measures=["FLASK", "Koala"])
    figures.source_bars(df, tmp_path / "s.png")
    fig = captured[-1]
    flask, koala = fig.axes[0], fig.axes[1]
    assert list(flask.lines[0].get_xdata()) == [3.2, 4.0] and list(koala.lines[0].get_xdata()) == [2.0]
    # the CI bar of m$1$ on Koala spans its interval
    seg = koala.collections[0].get_segments()[0]
    assert (seg[:, 0].min(), seg[:, 0].max()) == pytest.approx((1.5, 2.2))
    # '$' in a model name is shown as text, not read as mathtext
    assert flask.get_yticklabels()[0].get_text() == r"m\$1\$"
    assert fig.get_figwidth() <= plots.PAGE


def test_dimension_radar_draws_the_table_values_and_says_who_is_left_out(captured, tmp_path):
    import pandas as pd

    from reports import figures

    dims = ["Style", "Background knowledge", "Informativeness", "Harmlessness"]
    rng = np.random.default_rng(0)
    vals = rng.uniform(1, 5, size=(10, 4))
    df = pd.DataFrame(vals, columns=dims, index=pd.Index([f"m{i}" for i in range(10)], name="model"))
    df.attrs.update(measures=[*dims, "Average (all instances)"])
    figures.dimension_radar(df, tmp_path / "r.png")
    ax = captured[-1].axes[0]
    lines = ax.get_lines()
    assert len(lines) == figures.RADAR_MODELS
    for i, ln in enumerate(lines):  # closed polygon: the first spoke repeated at the end
        assert list(ln.get_ydata()) == [*vals[i], vals[i][0]]
        assert ln.get_label() == f"m{i}"
    assert f"first {figures.RADAR_MODELS} of 10 models" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == [d.replace(" ", "\n") for d in dims]


def test_significance_matrix_against_a_baseline_is_one_column_of_the_differences(captured, tmp_path):
    comps = [{"task": "t", "model": m, "reference": "base", "diff": d, "significant": d > 0.5}
             for m, d in (("b", 0.7), ("a", -0.2), ("c", 0.1))]
    plots.significance_matrix({"comparisons": comps}, "t", tmp_path / "s.png")
    ax = captured[-1].axes[0]
    mesh = ax.collections[0].get_array()
    assert mesh.shape == (3, 1) and list(mesh[:, 0]) == [-0.2, 0.7, 0.1]  # rows a, b, c
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base"]
    assert sorted(t.get_text() for t in ax.texts) == ["-0.2", "0.1", "0.7*"]
