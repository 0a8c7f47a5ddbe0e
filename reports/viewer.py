"""The per-sample viewer of report.html: every embedded sample row, filtered by benchmark, model,
source and score range, and two models' answers to one instance side by side with their system
messages, scores and the judge's rationale. The leaderboard's cells open it filtered to their
model and benchmark.

Safety: the rows travel as JSON in a ``<script type="application/json">`` data block (never run;
``<``, ``>`` and ``&`` written as ``\\u003c`` etc., so no text can close the block) and the
script builds the page with ``textContent`` only: model text never becomes HTML.

Size: per benchmark the first ``max_instances`` instances (all their rows, so comparisons stay
whole) within a share of a total text budget; a text longer than ``MAX_TEXT`` characters is cut
with a marker. The page says how many rows it holds of how many.
"""
from __future__ import annotations

import html
import json
import math
from collections import defaultdict

MAX_TEXT = 4000  # characters of one text (a response turn, a system message, a judge's rationale)
BUDGET = 24_000_000  # characters of text embedded for the whole report, shared by the benchmarks
ROW_COST = 60  # characters of JSON a row takes besides its texts


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


class _Clip:
    """Cuts texts at MAX_TEXT characters, counting how many were cut."""

    def __init__(self):
        self.cut = 0

    def text(self, x) -> str:
        s = "" if x is None else str(x)
        s = s.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate from JSON would not encode
        if len(s) > MAX_TEXT:
            self.cut += 1
            s = s[:MAX_TEXT] + f"\n… [{len(s) - MAX_TEXT:,} more characters not shown]"
        return s

    def texts(self, v) -> list[str]:
        if v is None or v == "":
            return []
        return [self.text(x) for x in v] if isinstance(v, list) else [self.text(v)]


def _num(x):
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return x


def _value(v):
    """A judgment's value as the judge gave it: a finite number, a string (a verdict) or null."""
    if v is None or isinstance(v, str):
        return v
    return _num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _turns(row: dict):
    for key in ("turns", "prompt"):
        if row.get(key):
            return row[key]
    return None


def _cost(rows: list[dict]) -> int:
    def n(v):
        if isinstance(v, list):
            return sum(n(x) for x in v)
        return min(len(str(v)), MAX_TEXT) if v else 0
    first = rows[0]
    inst = n(first.get("system")) + n(_turns(first)) + n(first.get("reference"))
    return inst + sum(ROW_COST + n(r.get("response")) + n(r.get("system"))
                      + sum(n(j.get("raw")) + n(j.get("feedback")) + 20 for j in r.get("judgments") or [])
                      for r in rows)


def build(samples_by_task: dict[str, list[dict]], max_instances: int = 200, budget: int = BUDGET) -> dict:
    """The data the viewer embeds. Rows point at their instance and model by index:
    ``{"models": [...], "tasks": [{"name", "instances": [{"id", "sy", "tu", "re", "src", "cat"}],
    "rows": [{"m", "i", "k", "s", "r", "j": [[criterion, value, raw, feedback]], "d", "sy"?}],
    "n_rows", "n_instances"}], "cut": texts cut, "max_text"}``; a row's ``sy`` is its own system
    message where it differs from its instance's (an ablation without one, say)."""
    clip = _Clip()
    models = sorted({str(r["model"]) for rows in samples_by_task.values() for r in rows})
    model_idx = {m: k for k, m in enumerate(models)}
    share = budget // max(1, len(samples_by_task))
    tasks = []
    for task, rows in samples_by_task.items():
        by_inst: dict[str, list[dict]] = defaultdict(list)  # in the order the run wrote them
        for r in rows:
            by_inst[str(r["instance_id"])].append(r)
        instances, out_rows, spent = [], [], 0
        for iid, group in by_inst.items():
            cost = _cost(group)
            if len(instances) >= max_instances or (instances and spent + cost > share):
                break
            spent += cost
            first = group[0]
            sy = clip.text(first.get("system")) if first.get("system") else ""
            inst = {"id": iid, "sy": sy, "tu": clip.texts(_turns(first)),
                    "re": "\n\n".join(clip.texts(first.get("reference"))),
                    "src": str(first.get("source") or ""), "cat": str(first.get("category") or "")}
            i = len(instances)
            instances.append(inst)
            for r in sorted(group, key=lambda r: (str(r["model"]), r.get("sample_index") or 0)):
                row = {"m": model_idx[str(r["model"])], "i": i, "k": r.get("sample_index") or 0,
                       "s": _num(r.get("score")), "r": clip.texts(r.get("response")),
                       "j": [[str(j.get("criterion", "")), _value(j.get("value")), clip.text(j.get("raw")),
                              clip.text(j.get("feedback"))] for j in r.get("judgments") or []],
                       "d": {str(k): _num(v) for k, v in (r.get("dims") or {}).items()}}
                own = clip.text(r.get("system")) if r.get("system") else ""
                if own != sy:
                    row["sy"] = own
                out_rows.append(row)
        tasks.append({"name": task, "instances": instances, "rows": out_rows, "n_rows": len(rows),
                      "n_instances": len(by_inst)})
    return {"models": models, "tasks": tasks, "cut": clip.cut, "max_text": MAX_TEXT}


def json_script(obj, element_id: str) -> str:
    """A JSON data block no text inside can close or turn into markup."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def note(data: dict) -> str:
    """How much of the run the page holds, in words."""
    shown = sum(len(t["rows"]) for t in data["tasks"])
    total = sum(t["n_rows"] for t in data["tasks"])
    parts = [f"{shown:,} of {total:,} sample rows embedded"]
    partial = [f"{t['name']}: first {len(t['instances']):,} of {t['n_instances']:,} instances"
               for t in data["tasks"] if len(t["instances"]) < t["n_instances"]]
    if partial:
        parts.append("; ".join(partial) + " (raise --max-instances for more)")
    if data["cut"]:
        parts.append(f"{data['cut']:,} texts over {data['max_text']:,} characters cut, marked …")
    return ". ".join(parts) + "."


def section(samples_by_task: dict[str, list[dict]], max_instances: int = 200) -> str:
    """The viewer's controls, empty containers its script fills, and the data block."""
    data = build(samples_by_task, max_instances)
    if not data["tasks"]:
        return '<p class="muted">no per-sample rows in these runs</p>'
    return f"""<p class="muted" id="sv-note">{esc(note(data))} Click a leaderboard cell to see its samples.</p>
<div class="sv-filters">
<label>benchmark <select id="sv-task"></select></label>
<label>model <select id="sv-model"></select></label>
<label>source <select id="sv-source"></select></label>
<label>score from <input id="sv-min" type="number" step="any"></label>
<label>to <input id="sv-max" type="number" step="any"></label>
<button type="button" id="sv-reset">reset</button>
</div>
<p class="muted" id="sv-count" aria-live="polite"></p>
<table class="sv-rows"><colgroup><col style="width:15%"><col style="width:11%"><col style="width:16%">
<col style="width:12%"><col style="width:7%"><col><col style="width:8%"></colgroup>
<thead><tr><th>benchmark</th><th>instance</th><th>model</th><th>source</th><th>score</th><th>response</th>
<th></th></tr></thead><tbody id="sv-body"></tbody></table>
<button type="button" id="sv-more" hidden>show more</button>
<div id="sv-compare" hidden><h3 id="sv-title"></h3><div id="sv-instance"></div>
<div class="sv-pick"><label>left <select id="sv-left"></select></label>
<label>right <select id="sv-right"></select></label></div>
<div class="sv-pair"><div class="sv-side" id="sv-a"></div><div class="sv-side" id="sv-b"></div></div></div>
<noscript><p>The viewer needs JavaScript; the samples are in the run's samples/*.jsonl.</p></noscript>
{json_script(data, "sv-data")}"""


STYLE = """
.sv-filters{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;margin:8px 0;font-size:13px}
.sv-filters select{max-width:260px}
.sv-filters input{width:6em}
table.sv-rows{width:100%;table-layout:fixed;font-size:12px}
table.sv-rows td{overflow-wrap:anywhere}
table.sv-rows tr.sel td{background:#eef3fb}
td.sv-link{cursor:pointer}
td.sv-link:hover,td.sv-link:focus{background:#eef3fb;outline:1px solid #7a9cd6}
#sv-compare{border:1px solid #ccc;border-radius:4px;padding:8px 12px;margin:10px 0;background:#fafafa}
.sv-pick{display:flex;gap:16px;margin:6px 0;font-size:13px}
.sv-pick select{max-width:420px}
.sv-pair{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px}
.sv-side{border:1px solid #ddd;border-radius:4px;padding:6px 8px;background:#fff;min-width:0}
.sv-side h4{margin:2px 0 6px 0}
.sv-label{font-weight:600;font-size:12px;margin-top:6px}
"""

# Reads the data block, fills the filters, lists the matching rows 100 at a time and shows two
# rows of one instance side by side. Builds every node with createElement/textContent.
SCRIPT = r"""
(function () {
  var source = document.getElementById('sv-data');
  if (!source) { return; }
  var data = JSON.parse(source.textContent), PAGE = 100, limit = PAGE, current = null;
  function $(id) { return document.getElementById(id); }
  var f = {task: $('sv-task'), model: $('sv-model'), source: $('sv-source'), min: $('sv-min'), max: $('sv-max')};
  function node(tag, text, cls) {
    var n = document.createElement(tag);
    if (text !== undefined && text !== null) { n.textContent = String(text); }
    if (cls) { n.className = cls; }
    return n;
  }
  function clear(n) { while (n.firstChild) { n.removeChild(n.firstChild); } }
  function option(sel, value, label) { var o = node('option', label); o.value = value; sel.appendChild(o); }
  function fmt(s) { return s === null || s === undefined ? '—' : String(Math.round(s * 1000) / 1000); }
  function label(x) { return data.models[x.r.m] + (x.r.k ? ' (sample ' + x.r.k + ')' : ''); }
  var all = [], byInstance = {}, count = {};
  data.tasks.forEach(function (t, ti) {
    t.rows.forEach(function (r) {
      var x = {t: ti, r: r};
      all.push(x);
      (byInstance[ti + '/' + r.i] = byInstance[ti + '/' + r.i] || []).push(x);
      count[ti + '/' + r.m] = (count[ti + '/' + r.m] || 0) + 1;
    });
  });
  option(f.task, '', 'all benchmarks');
  data.tasks.forEach(function (t, ti) { option(f.task, String(ti), t.name); });
  option(f.model, '', 'all models');
  data.models.forEach(function (m, mi) { option(f.model, String(mi), m); });
  function fillSources() {
    var keep = f.source.value, seen = {}, list = [];
    data.tasks.forEach(function (t, ti) {
      if (f.task.value !== '' && String(ti) !== f.task.value) { return; }
      t.instances.forEach(function (inst) {
        if (inst.src && !seen[inst.src]) { seen[inst.src] = 1; list.push(inst.src); }
      });
    });
    list.sort();
    clear(f.source);
    option(f.source, '', 'all sources');
    list.forEach(function (s) { option(f.source, s, s); });
    f.source.value = seen[keep] ? keep : '';
  }
  function bound(input) {
    var v = parseFloat(input.value);
    return isFinite(v) ? v : null;
  }
  function matching() {
    var ti = f.task.value, mi = f.model.value, src = f.source.value, lo = bound(f.min), hi = bound(f.max);
    return all.filter(function (x) {
      if (ti !== '' && String(x.t) !== ti) { return false; }
      if (mi !== '' && String(x.r.m) !== mi) { return false; }
      if (src !== '' && data.tasks[x.t].instances[x.r.i].src !== src) { return false; }
      if (lo === null && hi === null) { return true; }
      var s = x.r.s;  // a range hides unscored rows
      return s !== null && (lo === null || s >= lo) && (hi === null || s <= hi);
    });
  }
  function preview(texts) {
    var s = texts.length ? texts[0] : '';
    return s.length > 160 ? s.slice(0, 160) + '…' : s;
  }
  function render() {
    var rows = matching(), body = $('sv-body');
    clear(body);
    rows.slice(0, limit).forEach(function (x) {
      var t = data.tasks[x.t], inst = t.instances[x.r.i], tr = document.createElement('tr');
      if (current === x) { tr.className = 'sel'; }
      [t.name, inst.id, label(x), inst.src || inst.cat, fmt(x.r.s), preview(x.r.r)].forEach(function (v) {
        tr.appendChild(node('td', v));
      });
      var td = document.createElement('td'), b = node('button', 'compare');
      b.type = 'button';
      b.addEventListener('click', function () { compare(x); });
      td.appendChild(b);
      tr.appendChild(td);
      body.appendChild(tr);
    });
    $('sv-count').textContent = rows.length + ' matching rows' +
      (rows.length > limit ? ', the first ' + limit + ' shown' : '');
    $('sv-more').hidden = rows.length <= limit;
  }
  function refresh() { limit = PAGE; render(); }
  function textBlock(parent, title, text) {
    if (!text) { return; }
    parent.appendChild(node('div', title, 'sv-label'));
    parent.appendChild(node('pre', text));
  }
  function system(x) {
    var own = x.r.sy;
    return own !== undefined ? own : data.tasks[x.t].instances[x.r.i].sy;
  }
  function side(el, x, showSystem) {
    clear(el);
    if (!x) { el.appendChild(node('p', 'no other row of this instance', 'muted')); return; }
    el.appendChild(node('h4', label(x) + ' — score ' + fmt(x.r.s)));
    var dims = Object.keys(x.r.d).map(function (k) { return k + '=' + fmt(x.r.d[k]); }).join(', ');
    if (dims) { el.appendChild(node('div', dims, 'muted')); }
    if (showSystem) { textBlock(el, 'system message', system(x) || '(none)'); }
    x.r.r.forEach(function (txt, k) { textBlock(el, x.r.r.length > 1 ? 'answer ' + (k + 1) : 'answer', txt || ' '); });
    x.r.j.forEach(function (j) {
      var v = typeof j[1] === 'number' ? fmt(j[1]) : (j[1] === null ? '—' : j[1]);
      el.appendChild(node('div', 'judge: ' + j[0] + ' = ' + v, 'sv-label'));
      if (j[2].trim()) { el.appendChild(node('pre', j[2])); }
      if (j[3] && j[3] !== j[2]) { el.appendChild(node('div', j[3], 'muted')); }
    });
  }
  function pick(sel, rows, chosen) {
    clear(sel);
    rows.forEach(function (x, k) { option(sel, String(k), label(x)); });
    sel.value = String(rows.indexOf(chosen));
  }
  function compare(x, other) {
    var rows = byInstance[x.t + '/' + x.r.i], t = data.tasks[x.t], inst = t.instances[x.r.i];
    current = x;
    if (other === undefined) {
      other = rows.filter(function (y) { return y.r.m !== x.r.m; })[0] ||
              rows.filter(function (y) { return y !== x; })[0] || null;
    }
    $('sv-title').textContent = t.name + ' · instance ' + inst.id +
      (inst.src ? ' · ' + inst.src : '') + (inst.cat && inst.cat !== inst.src ? ' · ' + inst.cat : '');
    var head = $('sv-instance'), split = other !== null && system(other) !== system(x);
    clear(head);
    if (!split) { textBlock(head, 'system message', system(x)); }
    inst.tu.forEach(function (txt, k) { textBlock(head, inst.tu.length > 1 ? 'user turn ' + (k + 1) : 'user', txt); });
    if (inst.re) {
      var d = node('details'); d.appendChild(node('summary', 'reference answer')); d.appendChild(node('pre', inst.re));
      head.appendChild(d);
    }
    pick($('sv-left'), rows, x);
    pick($('sv-right'), other ? rows : [], other);
    side($('sv-a'), x, split);
    side($('sv-b'), other, split);
    $('sv-compare').hidden = false;
    render();
    $('sv-compare').scrollIntoView();
  }
  function repick() {
    var rows = byInstance[current.t + '/' + current.r.i];
    compare(rows[+$('sv-left').value], rows[+$('sv-right').value] || null);
  }
  $('sv-left').addEventListener('change', repick);
  $('sv-right').addEventListener('change', repick);
  f.task.addEventListener('change', function () { fillSources(); refresh(); });
  [f.model, f.source].forEach(function (s) { s.addEventListener('change', refresh); });
  [f.min, f.max].forEach(function (s) { s.addEventListener('input', refresh); });
  $('sv-more').addEventListener('click', function () { limit += PAGE; render(); });
  function show(ti, mi) {
    f.task.value = ti; fillSources(); f.model.value = mi; f.source.value = ''; f.min.value = ''; f.max.value = '';
    refresh();
    $('samples').scrollIntoView();
  }
  $('sv-reset').addEventListener('click', function () { show('', ''); });
  // leaderboard cells with embedded rows open the viewer filtered to their model and benchmark
  var taskIdx = {}, modelIdx = {};
  data.tasks.forEach(function (t, ti) { taskIdx[t.name] = ti; });
  data.models.forEach(function (m, mi) { modelIdx[m] = mi; });
  var cells = document.querySelectorAll('td[data-task]');  // the model: the row's first cell
  for (var c = 0; c < cells.length; c++) {
    (function (cell) {
      var first = cell.parentNode.cells[0], name = first.getAttribute('data-v');
      var ti = taskIdx[cell.getAttribute('data-task')], mi = modelIdx[name === null ? first.textContent : name];
      if (ti === undefined || mi === undefined || !count[ti + '/' + mi]) { return; }
      cell.classList.add('sv-link');
      cell.tabIndex = 0;
      cell.setAttribute('role', 'link');
      cell.title = (cell.title ? cell.title + ' — ' : '') + 'click for its samples';
      cell.addEventListener('click', function () { show(String(ti), String(mi)); });
      cell.addEventListener('keydown', function (ev) {
        if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); show(String(ti), String(mi)); }
      });
    })(cells[c]);
  }
  fillSources();
  render();
})();
"""
