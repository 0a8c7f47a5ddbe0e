"""The per-sample viewer's data (reports/viewer.py) without a browser: the JSON block cannot be
closed by model text and parses back to the rows, caps keep instances whole and are stated in the
page, long texts are cut with a marker. tests/test_report_browser.py drives the page itself."""
from __future__ import annotations

import json
import re

from reports import viewer

HOSTILE = '</script><script>window.__pwned=1</script><!-- <img src=x onerror="window.__pwned=1"> & \u2028'


def _rows(task="mt_bench", models=("a", "b"), n=5, text="answer"):
    return [{"task": task, "instance_id": f"q{i}", "model": m, "score": float(i + k), "system": f"sys {i}",
             "prompt": [f"turn one {i}", "turn two"], "response": [f"{text} {m} {i}", "second"],
             "source": f"src{i % 2}", "category": "writing",
             "judgments": [{"criterion": "turn1", "value": i + k, "raw": f"rationale {m} {i}", "feedback": "5"}]}
            for i in range(n) for k, m in enumerate(models)]


def _block(page: str) -> str:
    m = re.search(r'<script type="application/json" id="sv-data">(.*?)</script>', page, re.S)
    assert m, "no data block"
    return m.group(1)


def test_json_block_cannot_be_closed_by_model_text_and_round_trips():
    rows = _rows()
    rows[0]["response"] = HOSTILE
    rows[1]["system"] = HOSTILE
    rows[2]["judgments"][0]["raw"] = HOSTILE
    page = viewer.section({"mt_bench": rows})
    body = _block(page)
    assert "<" not in body and ">" not in body and "&" not in body  # nothing the HTML parser could read
    assert page.count("</script>") == 1 and "<!--" not in page
    data = json.loads(body)  # \u003c and friends are plain JSON escapes
    assert data == viewer.build({"mt_bench": rows})
    inst = data["tasks"][0]["instances"]
    first = data["tasks"][0]["rows"]
    assert first[0]["r"] == [HOSTILE] and first[1]["sy"] == HOSTILE and inst[0]["sy"] == "sys 0"
    assert data["tasks"][0]["rows"][2]["j"] == [["turn1", 1, HOSTILE, "5"]]


def test_rows_point_at_their_instance_and_model():
    rows = _rows(models=("b", "a"))
    rows.append({**rows[0], "model": "a", "sample_index": 1, "score": float("nan"), "system": None,
                 "dims": {"x": float("inf"), "y": 2}})
    data = viewer.build({"mt_bench": rows})
    t = data["tasks"][0]
    assert data["models"] == ["a", "b"]
    assert [i["id"] for i in t["instances"]] == [f"q{i}" for i in range(5)]  # in the run's order
    assert t["instances"][0] == {"id": "q0", "sy": "sys 0", "tu": ["turn one 0", "turn two"], "re": "",
                                 "src": "src0", "cat": "writing"}
    q0 = [r for r in t["rows"] if r["i"] == 0]
    assert [(data["models"][r["m"]], r["k"]) for r in q0] == [("a", 0), ("a", 1), ("b", 0)]  # by model, sample
    extra = q0[1]
    assert extra["s"] is None and extra["d"] == {"x": None, "y": 2} and extra["sy"] == ""  # no system: said so
    assert "sy" not in q0[0]  # the instance's system message: not repeated
    json.dumps(data, allow_nan=False)  # NaN and inf never reach JSON.parse


def test_caps_keep_instances_whole_and_the_page_says_so():
    rows = _rows(models=("a", "b", "c"), n=30)
    data = viewer.build({"mt_bench": rows, "alpaca_eval": _rows("alpaca_eval", n=3)}, max_instances=10)
    mt, ae = data["tasks"]
    assert len(mt["instances"]) == 10 and len(mt["rows"]) == 30 and mt["n_rows"] == 90 and mt["n_instances"] == 30
    assert len(ae["instances"]) == 3 and len(ae["rows"]) == 6
    note = viewer.note(data)
    assert note.startswith("36 of 96 sample rows embedded.")
    assert "mt_bench: first 10 of 30 instances" in note and "alpaca_eval" not in note
    # a text budget: whole instances (every model's row) until the benchmark's share is spent
    small = viewer.build({"mt_bench": rows}, budget=1500)
    t = small["tasks"][0]
    assert 0 < len(t["instances"]) < 30 and len(t["rows"]) == 3 * len(t["instances"])
    tiny = viewer.build({"mt_bench": rows}, budget=1)
    assert len(tiny["tasks"][0]["instances"]) == 1  # never less than one instance


def test_long_texts_are_cut_with_a_marker():
    rows = _rows(n=2, text="x" * (viewer.MAX_TEXT + 500))
    data = viewer.build({"mt_bench": rows})
    r = data["tasks"][0]["rows"][0]["r"][0]
    assert r.startswith("x" * 100) and len(r) < viewer.MAX_TEXT + 60
    assert r.endswith(f"… [{500 + len(' a 0')} more characters not shown]")
    assert data["cut"] == 4
    assert "4 texts over 4,000 characters cut, marked …" in viewer.note(data)
    bad = viewer.build({"mt_bench": [{**rows[0], "response": "ok \ud800 ok"}]})  # a lone surrogate
    assert bad["tasks"][0]["rows"][0]["r"] == ["ok ? ok"]


def test_no_samples_no_viewer():
    assert "no per-sample rows" in viewer.section({})
    assert "sv-data" not in viewer.section({})
