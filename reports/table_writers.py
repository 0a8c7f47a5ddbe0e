"""Write the tables of ``reports.tables`` as an HTML fragment, CSV and LaTeX (booktabs).

A measure column ``X`` is shown with its CI as ``X [X_lower, X_upper]`` at the table's precision
(HTML, LaTeX); the CSV keeps every column at full precision and starts with ``#`` comment lines
holding the title and the notes (``pandas.read_csv(path, comment="#")`` reads it back). Every
string is escaped for its format: HTML through ``html.escape``, LaTeX through ``latex_escape``.
"""
from __future__ import annotations

import csv
import html
import math
from pathlib import Path

import pandas as pd

from reports import labels

# order matters: the backslash first, so the ones added by later replacements stay
LATEX_SPECIALS = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                  ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
                  ("^", r"\textasciicircum{}")]


def latex_escape(text) -> str:
    s = str(text)
    out = []
    for ch in s:  # one pass per character, so a replacement is never escaped again
        out.append(next((rep for c, rep in LATEX_SPECIALS if c == ch), ch))
    return "".join(out).replace("\n", " ")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _decimals(df: pd.DataFrame, col: str, value: float) -> int:
    d = df.attrs.get("decimals", {}).get(col)
    return d if d is not None else (1 if abs(value) >= 10 else 3)


def display_columns(df: pd.DataFrame) -> list[str]:
    """The columns shown: every column except the CI bounds of a measure (shown beside it)."""
    bounds = {f"{m}_{s}" for m in df.attrs.get("measures", []) for s in ("lower", "upper")}
    return [c for c in df.columns if c not in bounds]


def cell_text(df: pd.DataFrame, row: pd.Series, col: str) -> tuple[str, str]:
    """(value, CI) as text at the table's precision; '' for a missing one."""
    v = row.get(col)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "", ""
    if not _finite(v):
        return str(v), ""
    if isinstance(v, bool) or (float(v).is_integer() and col not in df.attrs.get("decimals", {})
                               and col not in df.attrs.get("measures", [])):
        return str(int(v)), ""
    d = _decimals(df, col, float(v))
    if col == "p" or col.startswith("p ("):  # p-values: fixed 4 decimals, a floor for the tiny ones
        return ("<0.0001" if v < 1e-4 else f"{v:.4f}"), ""
    ci = ""
    if col in df.attrs.get("measures", []):
        lo, hi = row.get(f"{col}_lower"), row.get(f"{col}_upper")
        if _finite(lo) and _finite(hi):
            ci = f"[{lo:.{d}f}, {hi:.{d}f}]"
    return f"{v:.{d}f}", ci


def _rows(df: pd.DataFrame):
    index = df.index.name
    for key, row in df.iterrows():
        yield (key if index else None), row


def _header(df: pd.DataFrame) -> list[str]:
    lib = df.attrs.get("lower_is_better", {})
    cols = []
    for c in display_columns(df):
        arrow = "" if c not in lib else (" (↓)" if lib[c] else " (↑)")
        cols.append(c + arrow)
    return ([df.index.name] if df.index.name else []) + cols


def to_html(df: pd.DataFrame, stem: str | None = None) -> str:
    """``<h3>`` title, the table (CIs in brackets), the notes, and links to the CSV and LaTeX files."""
    e = lambda x: html.escape("" if x is None else str(x), quote=True)  # noqa: E731
    head = "".join(f"<th>{e(h)}</th>" for h in _header(df))
    body = []
    for key, row in _rows(df):
        cells = [] if key is None else [f"<td>{e(key)}</td>"]
        for c in display_columns(df):
            v, ci = cell_text(df, row, c)
            cells.append(f"<td>{e(v)}" + (f' <span class="muted">{e(ci)}</span>' if ci else "") + "</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="muted">{e(n)}</p>' for n in df.attrs.get("notes", []))
    links = (f'<p class="muted">files: <a href="tables/{e(stem)}.csv">{e(stem)}.csv</a>, '
             f'<a href="tables/{e(stem)}.tex">{e(stem)}.tex</a></p>' if stem else "")
    return (f"<h3>{e(df.attrs.get('title', stem))}</h3><div class=\"scroll\"><table><tr>{head}</tr>"
            f"{''.join(body)}</table></div>{notes}{links}")


def to_csv(df: pd.DataFrame) -> str:
    notes = [*df.attrs.get("notes", []), *([labels.RULE] if "label" in df.columns else [])]
    lines = [f"# {df.attrs.get('title', '')}"] + [f"# {n}".replace("\n", " ") for n in notes]
    # strings quoted: a '#' in a model name then stays data for a reader that skips '#' comments
    return "\n".join(lines) + "\n" + df.to_csv(index=bool(df.index.name), lineterminator="\n",
                                               quoting=csv.QUOTE_NONNUMERIC)


def to_latex(df: pd.DataFrame, stem: str = "table") -> str:
    """A booktabs table (``\\usepackage{booktabs}``); the notes as comments above it."""
    cols = display_columns(df)
    text_cols = {c for c in cols if not pd.api.types.is_numeric_dtype(df[c])}
    align = ("l" if df.index.name else "") + "".join("l" if c in text_cols else "r" for c in cols)
    lines = [f"% {latex_escape(n)}" for n in df.attrs.get("notes", [])]
    env = "table*" if len(align) > 6 else "table"  # a wide table spans both columns of the page
    label = "".join(ch if ch.isalnum() else "-" for ch in stem)  # no escapes inside \label
    lines += [rf"\begin{{{env}}}[t]", r"\centering", r"\small",
              rf"\caption{{{latex_escape(df.attrs.get('title', stem))}; 95\% CIs in brackets.}}",
              rf"\label{{tab:{label}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
              " & ".join(latex_escape(h).replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$")
                         for h in _header(df)) + r" \\", r"\midrule"]
    for key, row in _rows(df):
        cells = [] if key is None else [latex_escape(key)]
        for c in cols:
            v, ci = cell_text(df, row, c)
            cells.append(latex_escape(v) + (f" {{\\scriptsize {latex_escape(ci)}}}" if ci else ""))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\end{{{env}}}"]
    return "\n".join(lines) + "\n"


def write_all(tables: dict[str, pd.DataFrame], out_dir) -> dict[str, list[Path]]:
    """``<stem>.csv`` and ``<stem>.tex`` per table into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, df in tables.items():
        csv_path, tex_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.tex"
        csv_path.write_text(to_csv(df), encoding="utf-8")
        tex_path.write_text(to_latex(df, stem), encoding="utf-8")
        paths[stem] = [csv_path, tex_path]
    return paths


def html_section(tables: dict[str, pd.DataFrame]) -> str:
    if not tables:
        return '<p class="muted">no data for the paper\'s tables</p>'
    return "".join(to_html(df, stem) for stem, df in tables.items())
