"""A static, self-contained report.html: leaderboard, significance, plots, per-sample viewer.

Safety: every string that comes from a model, a judge, a prompt or a file name is passed
through ``html.escape`` before it reaches the page, or travels as JSON in a data block that the
viewer shows with ``textContent`` (reports/viewer.py), so ``<script>`` in a response is shown as
text. Defence in depth: a Content-Security-Policy allows no network resources at all and
only the one inline script below (by its sha256), so even a missed escape could not run code
or load anything. Plots are embedded as base64 PNG; the page works offline.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import defaultdict
from pathlib import Path

from reports import glance, viewer
from reports.significance import fmt_num, fmt_p

# The leaderboard's sorting (glance.SORT_SCRIPT) and the per-sample viewer (viewer.SCRIPT) as one
# inline script, allowed by the CSP through its sha256; the viewer's rows are a JSON data block,
# which is never run and so needs no allowance.
SCRIPT = glance.SORT_SCRIPT + viewer.SCRIPT + """
document.body.setAttribute('data-report-ready', '1');
"""

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr.sig td{background:#eef7ee}
.official{color:#b35900;font-weight:600}.muted{color:#777;font-size:12px}
img.plot{max-width:min(100%,900px);border:1px solid #eee;margin:6px 0}
pre{white-space:pre-wrap;word-wrap:break-word;font-size:12px;margin:4px 0;background:#fff;border:1px solid #eee;padding:6px}
.scroll{overflow-x:auto}
""" + glance.STYLE + viewer.STYLE


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="plot" alt="{esc(Path(path).stem)}" src="data:image/png;base64,{data}">'


def significance_tables(result: dict) -> str:
    s = result["settings"]
    parts = ['<ul class="muted">' + "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in s.items()) + "</ul>"]
    parts += [f'<p class="muted">note: {esc(n)}</p>' for n in result.get("notes", [])]
    by_task = defaultdict(list)
    for r in result["comparisons"]:
        by_task[r["task"]].append(r)
    cols = ["model", "reference", "n", "diff", "95% CI", "p boot", "p boot (Holm)", "p t", "p Wilcoxon",
            "W/L/T", "p sign", "p perm", "p McNemar", "d_z", "r_rb", "MDD", "significant"]
    for task, rows in by_task.items():
        lines = ["<tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>"]
        for r in rows:
            if "diff" not in r:
                vals = [r["model"], r["reference"], r["n"]] + ["—"] * 13 + [r.get("note", "")]
            else:
                vals = [r["model"], r["reference"], r["n"], fmt_num(r["diff"]),
                        f"[{fmt_num(r['ci_lower'])}, {fmt_num(r['ci_upper'])}]", fmt_p(r["p_bootstrap"]),
                        fmt_p(r["p_bootstrap_holm"]), fmt_p(r["p_t"]), fmt_p(r["p_wilcoxon"]),
                        f"{r['wins']}/{r['losses']}/{r['ties']}", fmt_p(r["p_sign"]), fmt_p(r["p_permutation"]),
                        fmt_p(r["p_mcnemar"]), fmt_num(r["cohens_dz"]), fmt_num(r["rank_biserial"]),
                        fmt_num(r["mdd"]), "yes" if r["significant"] else "no"]
            cls = ' class="sig"' if r.get("significant") else ""
            # data-task: a cell opens the per-sample viewer on the row's model (reports/viewer.py)
            lines.append(f"<tr{cls}>" + "".join(f'<td data-task="{esc(task)}">{esc(v)}</td>' for v in vals) + "</tr>")
        parts.append(f"<h3>{esc(task)}</h3><div class=\"scroll\"><table>{''.join(lines)}</table></div>")
    return "".join(parts)


def render(board: dict, significance: dict, plots: dict[str, Path], samples_by_task: dict[str, list[dict]],
           title: str = "Evaluation report", extra_sections: dict[str, str] | None = None,
           max_instances: int = 200) -> str:
    """The whole page as a string. ``extra_sections``: title -> already-escaped HTML."""
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'")
    plot_html = "".join(f"<h3>{esc(name)}</h3>{_img(p)}" for name, p in plots.items())
    runs = ", ".join(r.get("name", r["path"]) for r in board.get("runs", []))
    extra = "".join(f'<section id="extra{i}"><h2>{esc(k)}</h2>{v}</section>'
                    for i, (k, v) in enumerate((extra_sections or {}).items()))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="muted">runs: {esc(runs)}</p>
<section id="leaderboard"><h2>Leaderboard</h2>{glance.section(board)}</section>
<section id="significance"><h2>Significance</h2>{significance_tables(significance)}</section>
{extra}
<section id="plots"><h2>Plots</h2>{plot_html or '<p class="muted">no plots</p>'}</section>
<section id="samples"><h2>Per-sample viewer</h2>{viewer.section(samples_by_task, max_instances)}</section>
<script>{SCRIPT}</script>
</body></html>
"""


def json_block(obj) -> str:
    """A JSON value shown as escaped text (for appendices)."""
    return f"<pre>{esc(json.dumps(obj, indent=2, ensure_ascii=False))}</pre>"
