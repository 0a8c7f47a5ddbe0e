"""report.html in headless Chromium (DevTools protocol, tests/support/browser.py): no console errors
or CSP violations, a screenshot of every section at 1,280 px, no horizontal overflow, sorting by a
real click on a header, the per-sample viewer's filters, a leaderboard cell opening its samples, the
side-by-side comparison, and hostile model text shown as text that never runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.report import make_report
from support.browser import CHROMIUM, SKIP_REASON, Browser, is_png, png_size

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)

PWN = "window.__pwned=1"
HOSTILE = [f"<script>{PWN}</script>", f'<img src=x onerror="{PWN}">', f'<a href="javascript:{PWN}">x</a>']
HOSTILE_MODEL = f'<img src=x onerror="{PWN}">'
MODELS = ["alpha", "beta", "beta@sys-none", "gamma", HOSTILE_MODEL]
SOURCES = ["flask", "koala", "self_instruct"]
N = 12  # instances per benchmark


def _mf_score(i: int, k: int) -> float:
    return float(1 + (3 * i + 2 * k) % 5)


def _mt_score(i: int, k: int) -> float:
    return float(1 + (i + 3 * k) % 10)


def _samples() -> dict[str, list[dict]]:
    out = {"multifaceted_bench": [], "mt_bench": []}
    for k, m in enumerate(MODELS):
        for i in range(N):
            system = None if m.endswith("@sys-none") else f"You value brevity (instance {i})."
            response = f"{m} answers mf{i}" + ("".join(HOSTILE) if i == 0 else "")
            out["multifaceted_bench"].append({
                "task": "multifaceted_bench", "instance_id": f"mf{i}", "model": m, "source": SOURCES[i % 3],
                "category": SOURCES[i % 3], "system": system + (HOSTILE[0] if i == 0 else "") if system else None,
                "prompt": f"question {i}" + (HOSTILE[2] if i == 0 else ""), "response": response,
                "reference": "a reference answer", "score": _mf_score(i, k),
                "dims": {f"rubric{r}": _mf_score(i, k) for r in range(2)},
                "judgments": [{"criterion": f"rubric{r}", "value": _mf_score(i, k),
                               "raw": f"rationale of {m} on mf{i} rubric{r}" + (HOSTILE[1] if i == 0 else "")}
                              for r in range(2)]})
            out["mt_bench"].append({
                "task": "mt_bench", "instance_id": str(81 + i), "model": m, "source": "mt_bench",
                "category": "writing", "prompt": [f"turn one {i}", f"turn two {i}"],
                "response": [f"{m} turn one", f"{m} turn two"], "score": _mt_score(i, k),
                "judgments": [{"criterion": "turn1", "value": _mt_score(i, k), "feedback": "ok"}]})
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("browser") / "run"
    (run / "samples").mkdir(parents=True)
    samples = _samples()
    results = {}
    for task, rows in samples.items():
        for m in MODELS:
            scores = [r["score"] for r in rows if r["model"] == m]
            results.setdefault(task, {})[m] = {"score": sum(scores) / len(scores), "n": len(scores)}
        (run / "samples" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "results.json").write_text(json.dumps({"run": {"name": "browser"}, "results": results}))
    return make_report([run], run.parent / "out", baseline="alpha", B=200, seed=0)


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


@pytest.fixture()
def page(browser, report):
    p = browser.open(report.resolve().as_uri(), width=1280)
    assert p.eval("document.body.getAttribute('data-report-ready')") == "1"  # the script ran to its end
    return p


def visible_rows(page) -> list[dict]:
    return page.eval("""Array.prototype.map.call(document.querySelectorAll('#sv-body tr'), function (tr) {
        var c = tr.cells;
        return {task: c[0].textContent, id: c[1].textContent, model: c[2].textContent, source: c[3].textContent,
                score: c[4].textContent === '—' ? null : parseFloat(c[4].textContent)};
    })""")


def select_label(page, selector: str, label: str) -> None:
    value = page.eval(f"""(function () {{
        var o = Array.prototype.filter.call(document.querySelector({json.dumps(selector)}).options,
                                            function (o) {{ return o.textContent === {json.dumps(label)}; }});
        return o.length ? o[0].value : null; }})()""")
    assert value is not None, (selector, label)
    page.set_value(selector, value)


def test_no_errors_screenshots_of_every_section_and_no_overflow(page, tmp_path):
    assert page.eval("window.innerWidth") == 1280
    sections = page.eval("Array.prototype.map.call(document.querySelectorAll('body > section'), "
                         "function (s) { return s.id; })")
    assert {"leaderboard", "significance", "plots"} <= set(sections) and sections[-1] == "samples"
    for sid in sections:
        shot = page.screenshot(tmp_path / f"{sid}.png", f"#{sid}")
        assert is_png(shot) and png_size(shot)[0] == 1280, sid
    top = page.screenshot(tmp_path / "top.png")
    assert png_size(top) == (1280, 1000)
    layout = page.eval("""(function () {
        var t = document.querySelector('table.glance'), root = document.documentElement;
        return {page: root.scrollWidth - root.clientWidth, table: t.getBoundingClientRect().right,
                parent: t.parentElement.getBoundingClientRect().right,
                viewer: document.querySelector('table.sv-rows').getBoundingClientRect().right};
    })()""")
    assert layout["page"] <= 0 and layout["table"] <= layout["parent"] + 0.5, layout
    assert layout["viewer"] <= layout["parent"] + 0.5, layout
    assert page.errors() == []


def _column(page, col: int) -> list[list]:
    """Per <tbody> group of the glance table: (model, value of column col) of each row."""
    return page.eval(f"""Array.prototype.map.call(document.querySelector('table.glance').tBodies, function (b) {{
        return Array.prototype.map.call(b.rows, function (r) {{
            return [r.cells[0].getAttribute('data-v'), parseFloat(r.cells[{col}].getAttribute('data-v'))]; }});
    }})""")


def test_clicking_a_header_sorts_the_leaderboard(page):
    heads = page.eval("Array.prototype.map.call(document.querySelectorAll('table.glance thead th button'), "
                      "function (b) { return b.textContent; })")
    col = heads.index("mt_bench")
    before = _column(page, col)
    page.click("table.glance thead th button", col)
    desc = _column(page, col)
    best = [max(v for _, v in g) for g in desc]
    assert best == sorted(best, reverse=True)
    assert page.eval(f"document.querySelectorAll('table.glance thead th')[{col}].getAttribute('aria-sort')") \
        == "descending"
    page.click("table.glance thead th button", col)
    asc = _column(page, col)
    best = [min(v for _, v in g) for g in asc]
    assert best == sorted(best) and asc != desc and (desc != before or asc != before)
    beta = next(g for g in asc if g[0][0] == "beta")  # a variant stays under its base model
    assert [m for m, _ in beta] == ["beta", "beta@sys-none"]
    assert page.errors() == []


def test_viewer_filters_by_benchmark_model_source_and_score(page):
    assert len(visible_rows(page)) == 100  # 2 x 5 x 12 rows, the first 100 shown
    assert page.eval("document.getElementById('sv-count').textContent") == "120 matching rows, the first 100 shown"
    select_label(page, "#sv-task", "multifaceted_bench")
    select_label(page, "#sv-model", "gamma")
    rows = visible_rows(page)
    assert [(r["task"], r["id"], r["model"]) for r in rows] == [("multifaceted_bench", f"mf{i}", "gamma")
                                                               for i in range(N)]
    assert [r["score"] for r in rows] == [_mf_score(i, 3) for i in range(N)]
    select_label(page, "#sv-source", "koala")
    rows = visible_rows(page)
    assert [r["id"] for r in rows] == [f"mf{i}" for i in range(N) if SOURCES[i % 3] == "koala"]
    assert {r["source"] for r in rows} == {"koala"}
    select_label(page, "#sv-source", "all sources")
    page.set_value("#sv-min", "2")
    page.set_value("#sv-max", "3.5")
    rows = visible_rows(page)
    assert [r["id"] for r in rows] == [f"mf{i}" for i in range(N) if 2 <= _mf_score(i, 3) <= 3.5]
    assert rows and all(2 <= r["score"] <= 3.5 for r in rows)
    select_label(page, "#sv-model", "all models")
    rows = visible_rows(page)
    assert len(rows) == sum(2 <= _mf_score(i, k) <= 3.5 for i in range(N) for k in range(len(MODELS)))
    page.click("#sv-reset")
    assert len(visible_rows(page)) == 100 and page.eval("document.getElementById('sv-min').value") == ""
    assert page.errors() == []


def _cell_of(page, cells: str, model: str) -> int:
    """The index among ``cells`` of the one whose row is ``model``'s."""
    index = page.eval(f"Array.prototype.map.call(document.querySelectorAll({json.dumps(cells)}), function (c) {{"
                      f" var f = c.parentNode.cells[0]; return f.getAttribute('data-v') || f.textContent; }})"
                      f".indexOf({json.dumps(model)})")
    assert index >= 0, (cells, model)
    return index


def test_a_leaderboard_cell_opens_its_samples(page):
    cells = "table.glance td[data-task=mt_bench]"
    index = _cell_of(page, cells, "beta")
    assert page.eval(f"document.querySelectorAll({json.dumps(cells)})[{index}].classList.contains('sv-link')")
    page.click(cells, index)
    rows = visible_rows(page)
    assert [(r["task"], r["id"], r["model"]) for r in rows] == [("mt_bench", str(81 + i), "beta") for i in range(N)]
    assert [r["score"] for r in rows] == [_mt_score(i, 1) for i in range(N)]
    chosen = page.eval("[document.getElementById('sv-task').selectedOptions[0].textContent, "
                       "document.getElementById('sv-model').selectedOptions[0].textContent]")
    assert chosen == ["mt_bench", "beta"]
    seen = page.eval("[window.scrollY, document.getElementById('sv-body').getBoundingClientRect().top, "
                     "window.innerHeight]")
    assert seen[0] > 0 and 0 <= seen[1] < seen[2], seen  # scrolled to the rows
    # a cell of a detail table or of a significance table: the samples of its row's model
    for table, model, task in (("table.detail", "gamma", "multifaceted_bench"),
                               ("table:not([class])", "beta", "mt_bench")):
        cells = f"{table} td.sv-link[data-task={task}]"
        page.click(cells, _cell_of(page, cells, model))
        assert {(r["task"], r["model"]) for r in visible_rows(page)} == {(task, model)}
        assert len(visible_rows(page)) == N
    assert page.errors() == []


def _side(page, side: str) -> str:
    return page.eval(f"document.getElementById('sv-{side}').textContent")


def test_side_by_side_comparison(page, tmp_path):
    select_label(page, "#sv-task", "multifaceted_bench")
    select_label(page, "#sv-model", "beta")
    page.click("#sv-body button", 3)  # mf3
    assert page.eval("document.getElementById('sv-compare').hidden") is False
    assert page.eval("document.getElementById('sv-title').textContent") == "multifaceted_bench · instance mf3 · flask"
    head = page.eval("document.getElementById('sv-instance').textContent")
    assert "question 3" in head and "reference answer" in head
    a, b = _side(page, "a"), _side(page, "b")
    assert a.startswith(f"beta — score {_mf_score(3, 1):g}") and "beta answers mf3" in a
    assert "rationale of beta on mf3 rubric1" in a and "judge: rubric0 = " in a
    assert not b.startswith("beta") and "answers mf3" in b  # another model by default
    select_label(page, "#sv-right", "alpha")
    b = _side(page, "b")
    assert b.startswith("alpha — score") and "alpha answers mf3" in b and _side(page, "a") == a
    assert "You value brevity (instance 3)." in head  # one system message: shown once above
    select_label(page, "#sv-right", "beta@sys-none")
    b = _side(page, "b")
    assert b.startswith("beta@sys-none — score") and "system message(none)" in b
    assert "You value brevity (instance 3)." in _side(page, "a")  # two different ones: one per side
    assert "You value brevity" not in page.eval("document.getElementById('sv-instance').textContent")
    select_label(page, "#sv-left", "gamma")
    assert _side(page, "a").startswith("gamma — score") and _side(page, "b").startswith("beta@sys-none")
    shot = page.screenshot(tmp_path / "compare.png", "#sv-compare")
    assert is_png(shot) and png_size(shot)[0] == 1280
    assert page.errors() == []


def test_hostile_model_text_is_text_and_never_runs(page):
    select_label(page, "#sv-task", "multifaceted_bench")
    select_label(page, "#sv-model", HOSTILE_MODEL)  # the model name itself is hostile
    page.click("#sv-body button", 0)  # mf0: hostile response, system message, prompt and rationale
    a = _side(page, "a")
    head = page.eval("document.getElementById('sv-instance').textContent")
    assert a.startswith(HOSTILE_MODEL + " — score")
    assert "".join(HOSTILE) in a and HOSTILE[1] in a  # response and judge rationale, as written
    assert HOSTILE[0] in head and HOSTILE[2] in head  # system message and prompt
    page.click("#sv-body button", 0)
    counts = page.eval("""({img: document.querySelectorAll('img:not(.plot)').length,
        links: document.querySelectorAll('#samples a, a[href^="javascript"]').length,
        scripts: document.scripts.length,
        glance: Array.prototype.map.call(document.querySelectorAll('table.glance tbody td:first-child'),
                                         function (c) { return c.getAttribute('data-v'); })})""")
    assert counts["img"] == 0 and counts["links"] == 0 and counts["scripts"] == 2  # the report's script, the data
    assert HOSTILE_MODEL in counts["glance"]
    assert page.eval("typeof window.__pwned") == "undefined"
    assert page.errors() == []
