"""The leaderboard section of report.html: the banner and rule for labels, the table at a glance
(one row per model, variants under their base model, one sortable headline column per benchmark)
and the per-benchmark detail tables. Every string from a file or a model goes through ``esc``.
"""
from __future__ import annotations

import html
import math

from reports import labels, views

# Sorts the glance table by a clicked column: each base model's group (a <tbody>) moves as a whole,
# ordered by its best row; inside a group the base row stays first. Missing values go last.
SORT_SCRIPT = """
function cellValue(row, col) {
  var v = row.cells[col].getAttribute('data-v');
  if (v === null || v === '') { return null; }
  return col === 0 ? v : parseFloat(v);
}
function compareBy(col, dir) {
  return function (a, b) {
    var x = cellValue(a, col), y = cellValue(b, col);
    if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
    var c = x < y ? -1 : (x > y ? 1 : 0);
    return dir === 'asc' ? c : -c;
  };
}
function sortGlance(table, col, dir) {
  var cmp = compareBy(col, dir), groups = Array.prototype.slice.call(table.tBodies), best = [];
  groups.forEach(function (g) {
    var rows = Array.prototype.slice.call(g.rows);
    var head = rows[0].classList.contains('base') ? rows.shift() : null;
    rows.sort(cmp);
    if (head) { rows.unshift(head); }
    rows.forEach(function (r) { g.appendChild(r); });
    best.push(Array.prototype.slice.call(g.rows).sort(cmp)[0]);
  });
  var order = groups.map(function (g, i) { return i; });
  order.sort(function (i, j) { return cmp(best[i], best[j]); });
  order.forEach(function (i) { table.appendChild(groups[i]); });
  var heads = table.tHead.rows[0].cells;
  for (var k = 0; k < heads.length; k++) {
    heads[k].setAttribute('aria-sort', k === col ? (dir === 'asc' ? 'ascending' : 'descending') : 'none');
  }
}
var glances = document.querySelectorAll('table.glance');
for (var t = 0; t < glances.length; t++) {
  (function (table) {
    var heads = table.tHead.rows[0].cells;
    for (var k = 0; k < heads.length; k++) {
      (function (th, col) {
        th.querySelector('button').addEventListener('click', function () {
          var first = th.getAttribute('data-dir');
          var now = th.getAttribute('aria-sort');
          var dir = now === 'none' ? first : (now === 'ascending' ? 'desc' : 'asc');
          sortGlance(table, col, dir);
        });
      })(heads[k], k);
    }
  })(glances[t]);
}
"""

STYLE = """
.banner{border:1px solid #d9a400;background:#fff8e1;padding:8px 12px;border-radius:4px;margin:8px 0}
.banner ul{margin:4px 0 0 0;padding-left:18px}
table.glance{width:100%;table-layout:fixed;font-size:14px}
table.glance th,table.glance td{overflow-wrap:anywhere}
table.glance td{font-variant-numeric:tabular-nums;white-space:normal}
table.glance th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer;
  text-align:left;color:inherit}
table.glance th[aria-sort=ascending] button::after{content:" \\25B2"}
table.glance th[aria-sort=descending] button::after{content:" \\25BC"}
table.glance th .lbl{font-weight:400;font-size:11px;color:#8a5a00}
table.glance th .lbl.off{color:#2b6e2b}
table.glance tbody{border-top:2px solid #bbb}
table.glance tr.under td:first-child{padding-left:18px}
.ci{color:#555;font-size:12px}
.pm{display:inline-flex;flex-direction:column;font-size:10px;line-height:1.05;vertical-align:middle;color:#555}
td.off{color:#b35900;font-weight:600}
table.detail{font-size:12px}
"""


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _breakable(name: str) -> str:
    """A benchmark or metric name that may wrap after its underscores."""
    return esc(name).replace("_", "_<wbr>")


def banner(board: dict) -> str:
    lines = views.banner(board)
    rule = f'<p class="muted">{esc(labels.RULE)}</p>'
    if not lines:
        return rule
    items = "".join(f"<li>{esc(x)}</li>" for x in lines)
    return (f'<div class="banner" role="note"><b>Not comparable to published leaderboards:</b> these numbers '
            f"come from other graders than the benchmarks' official ones.<ul>{items}</ul></div>{rule}")


def _head(col: dict, k: int) -> str:
    arrow = "lower is better" if col["lower_is_better"] else "higher is better"
    lbls = "".join(f'<div class="lbl{" off" if x == "official" else ""}">{esc(x)}</div>' for x in col["labels"])
    metric = f'{_breakable(col["metric"])} {"↓" if col["lower_is_better"] else "↑"}'
    n = f" · {esc(col['n'])}" if col["n"] else ""
    return (f'<th scope="col" data-col="{k}" data-dir="{"asc" if col["lower_is_better"] else "desc"}" '
            f'aria-sort="none" title="{esc(arrow)}"><button type="button">{_breakable(col["task"])}</button>'
            f'<div class="muted">{metric}{n}</div>{lbls}</th>')


def _cell(task: str, c: dict | None) -> str:
    g = views.glance_cell(task, c)
    # the exact value to sort by; none (sorted last) when missing or not finite
    v = repr(float(g["value"])) if g["value"] is not None and math.isfinite(g["value"]) else ""
    if g["plus"] is None:
        ci = ""
    elif g["minus"] is None:
        ci = f' <span class="ci">±{esc(g["plus"])}</span>'
    else:
        ci = f' <span class="pm"><span>+{esc(g["plus"])}</span><span>\u2212{esc(g["minus"])}</span></span>'
    cls = ' class="off"' if g["official"] else ""
    # data-task: the per-sample viewer's script makes the cell open that benchmark's samples of the row's model
    return f'<td{cls} data-v="{esc(v)}" title="{esc(g["title"])}" data-task="{esc(task)}">{esc(g["text"])}{ci}</td>'


def glance_table(board: dict) -> str:
    cols = views.columns(board)
    head = ('<tr><th scope="col" data-col="0" data-dir="asc" aria-sort="none"><button type="button">model'
            "</button></th>" + "".join(_head(c, k + 1) for k, c in enumerate(cols)) + "</tr>")
    bodies = []
    for group in views.groups(board):
        rows = []
        for row in group:
            name = row["model"]
            base = views.base_model(name)
            if name == base:
                label, cls = esc(name), "base"
            elif group[0]["model"] == base:  # shown under its base model: the variant part is enough
                label, cls = f'↳ {esc(name[len(base):])}', "variant under"
            else:
                label, cls = esc(name), "variant"
            cells = "".join(_cell(c["task"], row["cells"].get(c["task"])) for c in cols)
            rows.append(f'<tr class="{cls}"><td data-v="{esc(name)}" title="{esc(name)}">{label}</td>{cells}</tr>')
        bodies.append(f"<tbody>{''.join(rows)}</tbody>")
    colgroup = '<colgroup><col style="width:19%">' + "<col>" * len(cols) + "</colgroup>"
    return f'<table class="glance">{colgroup}<thead>{head}</thead>{"".join(bodies)}</table>'


HARNESS_TITLE = ' title="mean of the per-sample scores (their own scale) with a 95% percentile bootstrap CI and n"'


def detail_tables(board: dict) -> str:
    parts = []
    for task in board["tasks"]:
        d = views.detail(board, task)
        if not d["rows"]:
            continue
        head = "<tr><th>model</th>" + "".join(
            f'<th{HARNESS_TITLE if c == views.HARNESS_MEAN else ""}>{_breakable(c)}</th>' for c in d["columns"]) + "</tr>"
        body = []
        for r in d["rows"]:
            cells = "".join(f'<td data-task="{esc(task)}">{esc(v)}'  # data-task: opens the row's samples
                            f'{f"<div class=muted>{esc(ci)}</div>" if ci else ""}</td>' for v, ci in r["cells"])
            body.append(f"<tr><td>{esc(r['model'])}</td>{cells}</tr>")
        notes = "".join(f'<li>{esc(n)}</li>' for n in d["notes"])
        graded = f'<p class="muted">{esc("; ".join(d["labels"]))}</p>'
        parts.append(f'<h4>{esc(task)}</h4>{graded}<div class="scroll"><table class="detail">{head}{"".join(body)}'
                     f'</table></div>{f"<ul class=muted>{notes}</ul>" if notes else ""}')
    return "".join(parts)


def section(board: dict) -> str:
    """The whole leaderboard section (after its <h2>)."""
    notes = "".join(f'<p class="muted">note: {esc(n)}</p>' for n in board.get("notes", []))
    b = board.get("bootstrap") or {}
    how = ("Headline: each benchmark's primary metric with its 95% CI (the task's own interval, or ±1.96 "
           "standard errors, or the harness's percentile bootstrap over the per-sample scores"
           + (f", B={b['B']}, seed {b['seed']}" if b else "") + "); hover a cell for its exact interval, n "
           "and label; click a header to sort, a cell for its samples.")
    return (f"{banner(board)}{glance_table(board)}<p class=\"muted\">{esc(how)}</p>{notes}"
            f"<h3>Details per benchmark</h3>{detail_tables(board)}")
