"""A static, self-contained report.html: leaderboard, significance, plots, per-sample drill-down.

Safety: every string that comes from a model, a judge, a prompt or a file name is passed
through ``html.escape`` before it reaches the page, so ``<script>`` in a response is shown as
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

from reports import glance
from reports.significance import fmt_num, fmt_p

# Shows the selected instance of each benchmark's drill-down and hides the others; sorts the
# leaderboard (glance.SORT_SCRIPT). One script, allowed by the CSP through its sha256.
SCRIPT = glance.SORT_SCRIPT + """
function showInstance(sel) {
  var panels = document.querySelectorAll('.inst[data-task="' + sel.getAttribute('data-task') + '"]');
  for (var i = 0; i < panels.length; i++) {
    panels[i].hidden = panels[i].getAttribute('data-idx') !== sel.value;
  }
}
var selects = document.querySelectorAll('select.drill');
for (var i = 0; i < selects.length; i++) {
  selects[i].addEventListener('change', function (ev) { showInstance(ev.target); });
  showInstance(selects[i]);
}
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
.grid{display:flex;gap:10px;overflow-x:auto}
.card{flex:0 0 340px;border:1px solid #ccc;border-radius:4px;padding:8px;background:#fafafa}
pre{white-space:pre-wrap;word-wrap:break-word;font-size:12px;margin:4px 0;background:#fff;border:1px solid #eee;padding:6px}
.scroll{overflow-x:auto}
""" + glance.STYLE


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
            lines.append(f"<tr{cls}>" + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>")
        parts.append(f"<h3>{esc(task)}</h3><div class=\"scroll\"><table>{''.join(lines)}</table></div>")
    return "".join(parts)


def _turns(row: dict) -> list[str]:
    for key in ("prompt", "turns"):
        v = row.get(key)
        if v:
            return [str(x) for x in v] if isinstance(v, list) else [str(v)]
    return []


def _response(row: dict) -> list[str]:
    v = row.get("response")
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def _judgments_html(js) -> str:
    if not js:
        return ""
    items = []
    for j in js:
        feedback = j.get("feedback", j.get("raw"))
        items.append(f"<li><b>{esc(j.get('criterion'))}</b>: {esc(j.get('value'))}"
                     + (f"<pre>{esc(feedback)}</pre>" if feedback else "") + "</li>")
    return f"<details><summary>judge feedback ({len(js)})</summary><ul>{''.join(items)}</ul></details>"


def drill_down(samples_by_task: dict[str, list[dict]], max_instances: int = 200) -> str:
    """Per benchmark: a selector over instances; per instance the prompt, system message,
    reference and every model's response side by side with its score and judge feedback."""
    parts = []
    for t_idx, (task, rows) in enumerate(samples_by_task.items()):
        by_inst: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_inst[str(r["instance_id"])].append(r)
        ids = sorted(by_inst)[:max_instances]
        if not ids:
            continue
        options = "".join(f'<option value="{i}">{esc(iid)}</option>' for i, iid in enumerate(ids))
        note = (f'<span class="muted"> (first {max_instances} of {len(by_inst)} instances)</span>'
                if len(by_inst) > max_instances else "")
        panels = []
        for i, iid in enumerate(ids):
            rs = sorted(by_inst[iid], key=lambda r: (r["model"], r.get("sample_index", 0)))
            first = rs[0]
            head = []
            if first.get("system"):
                head.append(f"<b>system message</b><pre>{esc(first['system'])}</pre>")
            for k, turn in enumerate(_turns(first), 1):
                head.append(f"<b>user turn {k}</b><pre>{esc(turn)}</pre>")
            ref = first.get("reference")
            if ref:
                ref = "\n\n".join(str(x) for x in ref) if isinstance(ref, list) else ref
                head.append(f"<details><summary>reference answer</summary><pre>{esc(ref)}</pre></details>")
            meta = ", ".join(f"{k}: {first[k]}" for k in ("source", "category") if first.get(k))
            cards = []
            for r in rs:
                dims = r.get("dims") or {}
                dims_html = ("<div class=\"muted\">" + esc(", ".join(f"{k}={v}" for k, v in dims.items())) + "</div>"
                             if dims else "")
                label = r["model"] + (f" (sample {r['sample_index']})" if r.get("sample_index") else "")
                resp = "".join(f"<pre>{esc(x)}</pre>" for x in _response(r))
                cards.append(f'<div class="card"><b>{esc(label)}</b> — score: <b>{esc(r.get("score"))}</b>'
                             f"{dims_html}{resp}{_judgments_html(r.get('judgments'))}</div>")
            panels.append(f'<div class="inst" data-task="{t_idx}" data-idx="{i}"'
                          f'{" hidden" if i else ""}><p class="muted">{esc(meta)}</p>{"".join(head)}'
                          f'<div class="grid">{"".join(cards)}</div></div>')
        parts.append(f"<h3>{esc(task)}</h3><label>instance: <select class=\"drill\" data-task=\"{t_idx}\">"
                     f"{options}</select></label>{note}{''.join(panels)}")
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
    extra = "".join(f"<h2>{esc(k)}</h2>{v}" for k, v in (extra_sections or {}).items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="muted">runs: {esc(runs)}</p>
<h2>Leaderboard</h2>{glance.section(board)}
<h2>Significance</h2>{significance_tables(significance)}
{extra}
<h2>Plots</h2>{plot_html or '<p class="muted">no plots</p>'}
<h2>Per-sample drill-down</h2>{drill_down(samples_by_task, max_instances)}
<script>{SCRIPT}</script>
</body></html>
"""


def json_block(obj) -> str:
    """A JSON value shown as escaped text (for appendices)."""
    return f"<pre>{esc(json.dumps(obj, indent=2, ensure_ascii=False))}</pre>"
