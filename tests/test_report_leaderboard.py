"""The report's leaderboard at a glance: one row per model (variants under their base model), one
headline column per benchmark with a short 95% CI, details per benchmark at the official tool's
precision, "official" only for the official judge's outputs, no horizontal scroll at 1,280 px,
sorting by any column (driven in headless Chromium)."""
from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from reports.report import make_report

XSS_MODEL = '<script>alert("m")</script>'
MODELS = ["base", "base@bo2[rm]", "base@bo4[rm]", "sft", "dpo", XSS_MODEL,
          "meta-llama/Meta-Llama-3-70B-Instruct", "mistral-7b-instruct-v0.2@sys-none"]
TASKS = ["alpaca_eval", "arena_hard", "mt_bench", "multifaceted_bench", "real_toxicity_prompts", "ifeval"]

LOCAL = {"judge_model": "smollm2-judge", "judge_api": "harness-serve"}
OFFICIAL = {"alpaca_eval": {"judge": "weighted_alpaca_eval_gpt4_turbo", "judge_model": "gpt-4-1106-preview",
                            "judge_api": "openai", "judge_method": "text"},
            "arena_hard": {"judge": "arena_hard_v0.1", "judge_model": "gpt-4-1106-preview", "judge_api": "openai",
                           "judge_method": "text"},
            "mt_bench": {"judge": "mt_bench_single", "judge_model": "gpt-4", "judge_api": "openai",
                         "judge_method": "text"},
            "multifaceted_bench": {"judge": "multifaceted_rubric", "judge_model": "gpt-4-0125-preview",
                                   "judge_api": "openai", "judge_method": "text"},
            "real_toxicity_prompts": {"scorer": "perspective"},
            "ifeval": {"scorer": "lm_eval"}}  # lm-eval's own metric code, no model: official


def _metrics(task: str, k: int, official: bool) -> dict:
    """A result with the keys each task writes (values vary with the model index k)."""
    x = 0.37 + 0.041 * k
    if task == "alpaca_eval":
        m = {"win_rate": 20 + 3.123456 * k, "standard_error": 1.2345 + 0.01 * k, "n_wins": 300 + k,
             "n_wins_base": 500 - k, "n_draws": 5, "n_total": 805, "discrete_win_rate": 19.87654 + k,
             "length_controlled_winrate": 22.456789 + 2 * k, "avg_length": 1500 + k, "n_parse_failures": 0,
             "primary_metric": "win_rate",
             "official_metrics": ["win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate"]}
    elif task == "arena_hard":
        s = 10 + 4.56789 * k
        m = {"score": s, "score_lower": s - 1.7123, "score_upper": s + 2.1456, "avg_tokens": 400 + k,
             "n_parse_failures": 1, "primary_metric": "score", "official_metrics": ["score", "score_lower", "score_upper"]}
    elif task == "mt_bench":
        s = 5 + 0.35625 * k
        m = {"score": s, "score_lower": s - 0.2, "score_upper": s + 0.2, "turn1": s + 0.1, "turn2": s - 0.1,
             "n": 80, "scale": "1-10", "primary_metric": "score", "official_metrics": ["score", "turn1", "turn2"]}
    elif task == "multifaceted_bench":
        s = 3 + 0.11 * k
        m = {"n": 921, "score": s, "score_lower": s - 0.05, "score_upper": s + 0.05,
             **{f"dim{d}": s + 0.01 * d for d in range(4)}, "primary_metric": "score", "official_metrics": ["score"]}
    elif task == "real_toxicity_prompts":
        m = {"expected_max_toxicity": x, "expected_max_toxicity_std": 0.2, "expected_max_toxicity_lower": x - 0.0123,
             "expected_max_toxicity_upper": x + 0.0131, "toxicity_probability": x / 2, "n_prompts": 1000,
             "dist1": 0.58123, "dist2": 0.85456, "dist3": 0.85789, "primary_metric": "expected_max_toxicity",
             "lower_is_better": True,
             "official_metrics": ["expected_max_toxicity", "toxicity_probability", "dist1", "dist2", "dist3"]}
    else:  # a benchmark the harness knows no official judge for
        m = {"prompt_level_strict_acc": 0.3 + 0.01 * k, "n": 541, "primary_metric": "prompt_level_strict_acc",
             "official_metrics": ["prompt_level_strict_acc"]}
    if task in OFFICIAL:
        if official:
            m.update(OFFICIAL[task])
        elif task == "real_toxicity_prompts":
            m["scorer"] = "toxic_comment_classifier"
        elif task == "ifeval":
            pass  # no grader recorded
        else:
            m.update(LOCAL, judge=OFFICIAL[task]["judge"],
                     judge_method="logprob" if task in ("mt_bench", "multifaceted_bench") else "text")
    return m


def write_run(run_dir: Path, models=MODELS, tasks=TASKS, official: bool = False) -> Path:
    """results.json for every (task, model); per-sample rows for mt_bench (significance needs some)."""
    (run_dir / "samples").mkdir(parents=True)
    results = {t: {m: _metrics(t, k, official) for k, m in enumerate(models)} for t in tasks}
    (run_dir / "results.json").write_text(json.dumps({"run": {"name": run_dir.name}, "results": results}))
    rng = np.random.default_rng(0)
    with open(run_dir / "samples" / "mt_bench.jsonl", "w") as fh:
        for k, m in enumerate(models):
            for i in range(20):
                fh.write(json.dumps({"task": "mt_bench", "instance_id": str(i), "model": m,
                                     "score": float(np.clip(5 + 0.3 * k + rng.normal(), 1, 10))}) + "\n")
    return run_dir


class Tables(HTMLParser):
    """Cells of the tables of one class: [[{"text", "attrs"}...] per row], headers included."""

    def __init__(self, cls: str):
        super().__init__()
        self.cls, self.depth, self.rows, self.cell = cls, 0, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.depth += 1 if (self.depth or self.cls in (a.get("class") or "").split()) else 0
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = {"text": "", "attrs": a, "tag": tag}
            self.rows[-1].append(self.cell)

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag in ("td", "th"):
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data


def table(page: str, cls: str) -> list[list[dict]]:
    p = Tables(cls)
    p.feed(page)
    return p.rows


def build(tmp_path: Path, official: bool = False, **kw) -> tuple[str, Path]:
    run = write_run(tmp_path / "run", official=official, **kw)
    path = make_report([run], tmp_path / "out", baseline="base", B=200, seed=0, max_instances=2)
    return path.read_text(encoding="utf-8"), path


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return build(tmp_path_factory.mktemp("local"))


SHORT = re.compile(r"^-?\d+\.\d+( ±\d+\.\d+| \+\d+\.\d+\u2212\d+\.\d+)?$")


def test_one_row_per_model_one_column_per_benchmark_with_short_cis(local):
    page, _ = local
    rows = table(page, "glance")
    head, body = rows[0], rows[1:]
    assert [c["text"] for c in head][0] == "model" and len(head) == 1 + len(TASKS)
    assert [c["text"].split(" ")[0].startswith(t) for c, t in zip(head[1:], TASKS)] == [True] * len(TASKS)
    assert len(body) == len(MODELS)
    assert sorted(r[0]["attrs"]["data-v"] for r in body) == sorted(MODELS)
    for r in body:
        assert len(r) == 1 + len(TASKS)
        for c in r[1:]:
            # one number and its CI: no second metric, no "name=value", no "(official)" in the cell
            assert SHORT.match(c["text"].strip()), c["text"]
            assert "=" not in c["text"] and ";" not in c["text"] and "official" not in c["text"]
    by_model = {r[0]["attrs"]["data-v"]: r for r in body}
    sft = by_model["sft"]  # model index 3
    assert sft[1]["text"] == f"{20 + 3.123456 * 3:.1f} ±{1.96 * (1.2345 + 0.03):.1f}"  # AlpacaEval: ±1.96 SE
    assert sft[2]["text"] == f"{10 + 4.56789 * 3:.1f} +2.1\u22121.7"  # Arena-Hard: asymmetric bootstrap CI
    assert sft[3]["text"] == f"{5 + 0.35625 * 3:.2f} ±0.20"
    assert sft[5]["text"].startswith(f"{0.37 + 0.041 * 3:.3f} ")  # toxicity: 3 decimals
    assert sft[6]["text"] == f"{0.33:.3f}"  # no CI known: the number alone
    # n per benchmark in the header, exact interval and n in the cell's tooltip
    assert "n=805" in head[1]["text"] and "n=80" in head[3]["text"] and "n=541" in head[6]["text"]
    assert "95% CI [" in sft[2]["attrs"]["title"] and "n=" in sft[3]["attrs"]["title"]


def test_variants_are_grouped_under_their_base_model(local):
    page, _ = local
    bodies = re.findall(r"<tbody>(.*?)</tbody>", page.split('<table class="glance">')[1].split("</table>")[0])
    groups = [re.findall(r'<tr class="[a-z ]+"><td data-v="([^"]*)"', b) for b in bodies]
    groups = [[html.unescape(x) for x in g] for g in groups]
    assert ["base", "base@bo2[rm]", "base@bo4[rm]"] in [sorted(g) for g in groups]
    base_group = next(g for g in groups if "base" in g)
    assert base_group[0] == "base"
    assert ["mistral-7b-instruct-v0.2@sys-none"] in groups  # a variant whose base was not evaluated
    rows = {r[0]["attrs"]["data-v"]: r[0]["text"] for r in table(page, "glance")[1:]}
    assert rows["base@bo4[rm]"].strip() == "↳ @bo4[rm]"
    assert rows["mistral-7b-instruct-v0.2@sys-none"] == "mistral-7b-instruct-v0.2@sys-none"


def test_details_hold_the_other_metrics_at_the_official_precision(local):
    page, path = local
    details = page.split("Details per benchmark")[1]
    sections = dict(re.findall(r"<h4>(.*?)</h4>(.*?)(?=<h4>|<h2>)", details, re.S))
    assert list(sections) == TASKS
    ae = table(sections["alpaca_eval"], "detail")
    cols = [c["text"] for c in ae[0]]
    row = {c: v["text"] for c, v in zip(cols, next(r for r in ae[1:] if r[0]["text"] == "sft"))}
    assert row["standard_error"] == "1.26" and row["discrete_win_rate"] == "22.88"  # alpaca_eval prints %.2f
    assert row["length_controlled_winrate"] == "28.46" and row["n_total"] == "805" and row["avg_length"] == "1503"
    ah = table(sections["arena_hard"], "detail")
    row = {c["text"]: v["text"] for c, v in zip(ah[0], next(r for r in ah[1:] if r[0]["text"] == "sft"))}
    assert row["score"] == "23.7[22.0, 25.8]"  # show_result: one decimal
    mt = table(sections["mt_bench"], "detail")
    row = {c["text"]: v["text"] for c, v in zip(mt[0], next(r for r in mt[1:] if r[0]["text"] == "sft"))}
    assert row["turn1"] == f"{5 + 0.35625 * 3 + 0.1:.6f}"  # FastChat show_result (pandas): 6 decimals
    rtp = table(sections["real_toxicity_prompts"], "detail")
    row = {c["text"]: v["text"] for c, v in zip(rtp[0], next(r for r in rtp[1:] if r[0]["text"] == "sft"))}
    assert row["dist1"] == "0.581" and row["expected_max_toxicity_std"] == "0.200"
    assert "scale: 1-10" in sections["mt_bench"]  # text fields are notes, not columns
    # who graded a benchmark is said once above its table, not in every row
    assert sections["mt_bench"].count("judge smollm2-judge (served locally), logprob scoring") == 1
    md = (path.parent / "leaderboard.md").read_text()
    assert "| sft | 29.37 | 1.26 |" in md and "## arena_hard" in md


def test_local_judge_is_labelled_with_its_name_and_method_never_official(local):
    page, path = local
    board = json.loads((path.parent / "leaderboard.json").read_text())
    cells = {(t, r["model"]): c for r in board["rows"] for t, c in r["cells"].items()}
    for m in MODELS:
        for t in TASKS:
            assert not cells[(t, m)]["official"] and not cells[(t, m)]["official_metrics"], (t, m)
    # AlpacaEval judged in text mode by a local model: computed the official way, still not official
    assert cells[("alpaca_eval", "base")]["label"] == "judge smollm2-judge (served locally)"
    assert cells[("mt_bench", "base")]["label"] == "judge smollm2-judge (served locally), logprob scoring"
    assert cells[("real_toxicity_prompts", "base")]["label"] == "scorer toxic_comment_classifier"
    assert cells[("ifeval", "base")]["label"] == "judge not recorded"
    banner = page.split('<div class="banner" role="note">')[1].split("</div>")[0]
    assert "Not comparable to published leaderboards" in banner
    assert "mt_bench, multifaceted_bench: judge smollm2-judge (served locally), logprob scoring" in banner
    assert "alpaca_eval, arena_hard: judge smollm2-judge (served locally)" in banner
    assert "gpt-4-1106-preview" in banner and "Perspective API" in banner
    assert page.count("&quot;official&quot; means the official computation on the official judge") == 1
    assert 'class="off"' not in page  # no headline cell styled official
    heads = [c["text"] for c in table(page, "glance")[0]]
    assert "judge smollm2-judge (served locally), logprob scoring" in heads[3]
    md = (path.parent / "leaderboard.md").read_text()
    assert "Not comparable to published leaderboards" in md and "(official)" not in md
    assert "judge smollm2-judge (served locally)" in (path.parent / "leaderboard.csv").read_text()


def test_official_judge_is_labelled_official(tmp_path):
    page, path = build(tmp_path, official=True)
    board = json.loads((path.parent / "leaderboard.json").read_text())
    for r in board["rows"]:
        for t in TASKS:
            assert r["cells"][t]["official"] and r["cells"][t]["label"] == "official", (t, r["model"])
    last = next(r for r in board["rows"] if r["model"] == MODELS[7])
    assert last["cells"]["alpaca_eval"]["official_metrics"]["length_controlled_winrate"] == 22.456789 + 2 * 7
    assert 'class="banner"' not in page and "Not comparable" not in page
    assert page.count("&quot;official&quot; means the official computation on the official judge") == 1
    heads = [c["text"] for c in table(page, "glance")[0]]
    assert all(h.endswith("official") for h in heads[1:]) and page.count('class="off"') == len(TASKS) * len(MODELS)


def test_an_official_model_name_behind_another_server_is_not_official(tmp_path):
    run = write_run(tmp_path / "run", tasks=["alpaca_eval"], official=True)
    doc = json.loads((run / "results.json").read_text())
    doc["results"]["alpaca_eval"]["base"]["judge_api"] = "server:localhost"
    doc["results"]["alpaca_eval"]["sft"]["judge_method"] = "logprob"
    (run / "results.json").write_text(json.dumps(doc))
    path = make_report([run], tmp_path / "out", B=200)
    cells = {r["model"]: r["cells"]["alpaca_eval"] for r in json.loads((path.parent / "leaderboard.json").read_text())["rows"]}
    assert not cells["base"]["official"] and cells["base"]["label"] == "judge gpt-4-1106-preview (at localhost)"
    assert not cells["sft"]["official"] and cells["dpo"]["official"]


def test_no_ci_from_another_scale(tmp_path):
    """AlpacaEval's samples are preferences in [0, 1], its win rate is in percent: without a standard
    error the headline gets no CI rather than the samples' CI; with samples equal to it, theirs."""
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    results = {"alpaca_eval": {"a": {"win_rate": 50.0, "primary_metric": "win_rate"}},
               "mt_bench": {"a": {"score": 0.5, "primary_metric": "score"}}}
    (run / "results.json").write_text(json.dumps({"results": results}))
    for task in ("alpaca_eval", "mt_bench"):
        (run / "samples" / f"{task}.jsonl").write_text("".join(
            json.dumps({"task": task, "instance_id": str(i), "model": "a", "score": float(i % 2)}) + "\n"
            for i in range(10)))
    path = make_report([run], tmp_path / "out", B=200)
    cells = json.loads((path.parent / "leaderboard.json").read_text())["rows"][0]["cells"]
    assert cells["alpaca_eval"]["lower"] is None and cells["alpaca_eval"]["sample"]["mean"] == 0.5
    assert cells["mt_bench"]["ci_source"] == "bootstrap" and cells["mt_bench"]["lower"] < 0.5
    rows = table(path.read_text(), "glance")
    assert rows[1][1]["text"] == "50.0" and rows[1][2]["text"].startswith("0.50 ")


def test_a_non_finite_headline_shows_a_dash_and_sorts_last():
    from reports import glance

    cell = {"value": float("nan"), "lower": None, "upper": None, "metric": "score", "n": 3, "label": "official",
            "official": True}
    assert glance._cell("mt_bench", cell).startswith('<td class="off" data-v="" ')
    assert ">—</td>" in glance._cell("mt_bench", cell)


def test_model_names_are_text(local):
    page, _ = local
    assert XSS_MODEL not in page and 'alert("m")' not in page
    assert "&lt;script&gt;alert(&quot;m&quot;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1


def test_pipeline_records_the_judge_and_a_served_official_name_is_not_official(tmp_path, data_dir):
    """A judge named like the official one but answering from another server: the results record the
    judge kind, model, API and method, and the report does not call its numbers official."""
    import asyncio
    import os

    from harness.config import parse_config
    from harness.fake import ScriptedBackend
    from harness.pipeline import run_all
    from harness.serve import ServerThread, build_app

    os.environ["HARNESS_TEST_KEY"] = "x"
    with ServerThread(build_app(ScriptedBackend(), "judge")) as srv:
        cfg = parse_config({"name": "t", "data_dir": str(data_dir),
                            "models": [{"name": "m1", "backend": "scripted", "model": "writer"}],
                            "judge": {"name": "gpt-4", "backend": "openai", "model": "gpt-4",
                                      "base_url": srv.base_url, "api_key_env": "HARNESS_TEST_KEY"},
                            "tasks": [{"name": "mt_bench", "limit": 2}],
                            "calls": {"concurrency": 2, "max_retries": 2, "backoff_base_s": 0.01}})
        asyncio.run(run_all(cfg, tmp_path / "run"))
    m = json.loads((tmp_path / "run" / "results.json").read_text())["results"]["mt_bench"]["m1"]
    assert {k: m.get(k) for k in ("judge", "judge_model", "judge_api", "judge_method")} == {
        "judge": "mt_bench_single", "judge_model": "gpt-4", "judge_api": "server:127.0.0.1", "judge_method": "text"}
    assert m["official_metrics"]  # computed the official way ...
    path = make_report([tmp_path / "run"], tmp_path / "out", B=200)
    cell = json.loads((path.parent / "leaderboard.json").read_text())["rows"][0]["cells"]["mt_bench"]
    assert not cell["official"] and cell["label"] == "judge gpt-4 (at 127.0.0.1)"  # ... from another judge
    assert "mt_bench: judge gpt-4 (at 127.0.0.1)" in path.read_text()


# ----------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Measures the glance table at the window's width and clicks headers; the result goes into an
# attribute that --dump-dom prints. Added to the page (and its hash to the CSP) by the test only.
PROBE = """
(function () {
  var table = document.querySelector('table.glance'), root = document.documentElement, out = {};
  out.viewport = window.innerWidth;
  out.pageOverflow = root.scrollWidth - root.clientWidth;
  out.tableRight = table.getBoundingClientRect().right;
  out.parentRight = table.parentElement.getBoundingClientRect().right;
  out.overflowingCells = [];
  var cells = table.querySelectorAll('th, td');
  for (var i = 0; i < cells.length; i++) {
    if (cells[i].scrollWidth > cells[i].clientWidth + 1) { out.overflowingCells.push(cells[i].textContent); }
  }
  function groups() {
    return Array.prototype.map.call(table.tBodies, function (b) {
      return Array.prototype.map.call(b.rows, function (r) { return r.cells[0].getAttribute('data-v'); });
    });
  }
  function click(k) { table.tHead.rows[0].cells[k].querySelector('button').click(); return groups(); }
  out.initial = groups();
  out.clicks = CLICKS.map(click);
  out.modelText = Array.prototype.map.call(table.querySelectorAll('tbody td:first-child'),
                                           function (c) { return c.textContent; });
  out.ready = document.body.getAttribute('data-report-ready');
  document.body.setAttribute('data-probe', JSON.stringify(out));
})();
"""
CLICKS = [3, 3, 5, 0]  # mt_bench (best first, then reversed), real_toxicity_prompts (lower is better), model


def _with_probe(page: str) -> str:
    probe = PROBE.replace("CLICKS", json.dumps(CLICKS))
    digest = base64.b64encode(hashlib.sha256(probe.encode()).digest()).decode()
    csp = "script-src &#x27;sha256-"
    assert csp in page
    page = page.replace(csp, f"script-src &#x27;sha256-{digest}&#x27; &#x27;sha256-", 1)
    return page.replace("</body>", f"<script>{probe}</script></body>")


def _expected(board_groups: list[list[str]], value, desc: bool) -> list[list[str]]:
    """The sort rule: a group moves as a whole, ordered by its best row; its base row stays first."""
    def key(m):
        v = value(m)
        return (v is None, -(v or 0) if desc else (v or 0))
    out = []
    for g in board_groups:
        head = [m for m in g[:1] if "@" not in m]
        out.append(head + sorted(g[len(head):], key=key))
    return sorted(out, key=lambda g: min(key(m) for m in g))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_chromium_1280px_no_horizontal_overflow_and_sorting(local, tmp_path):
    page, path = local
    probed = path.parent / "probe.html"
    probed.write_text(_with_probe(page), encoding="utf-8")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"]
    dom = subprocess.run(flags + ["--dump-dom", probed.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert m, "probe did not run (CSP?): " + dom.stderr[-2000:]
    out = json.loads(html.unescape(m.group(1)))
    assert out["ready"] == "1"  # the report's own script ran to its end
    assert out["viewport"] == 1280
    assert out["pageOverflow"] <= 0 and out["tableRight"] <= out["parentRight"] + 0.5, out
    assert out["overflowingCells"] == []
    assert XSS_MODEL in out["modelText"]  # the name is text in the DOM, not an element

    board = json.loads((path.parent / "leaderboard.json").read_text())
    value = {t: {r["model"]: r["cells"][t]["value"] for r in board["rows"]} for t in TASKS}
    groups = out["initial"]
    assert sorted(sum(groups, [])) == sorted(MODELS)
    mt_desc = _expected(groups, value["mt_bench"].get, desc=True)
    assert out["clicks"][0] == mt_desc
    assert out["clicks"][0][0][0] == "mistral-7b-instruct-v0.2@sys-none"  # model index 7: best MT-Bench
    assert out["clicks"][1] == _expected(groups, value["mt_bench"].get, desc=False)
    assert out["clicks"][2] == _expected(groups, value["real_toxicity_prompts"].get, desc=False)
    assert out["clicks"][2][0] == ["base", "base@bo2[rm]", "base@bo4[rm]"]  # least toxic group first
    assert out["clicks"][3] == sorted(out["clicks"][3], key=lambda g: g[0])  # by name, A to Z
    shot = path.parent / "glance.png"
    res = subprocess.run(flags + [f"--screenshot={shot}", path.resolve().as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
