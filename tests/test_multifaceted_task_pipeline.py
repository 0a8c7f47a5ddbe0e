"""A bench file through the lead's pipeline: build -> generate -> judge (rubric judge) -> aggregate."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from harness.backends.base import GenRequest
from harness.config import parse_config
from harness.fake import ScriptedBackend
from harness.pipeline import run_all
from harness.registry import BACKENDS, JUDGES
from harness.store import RunStore
from judges.rubric_judge import RubricJudge, render_judge_messages

EXAMPLE = Path(__file__).resolve().parents[1] / "tasks" / "multifaceted" / "readme_example.json"


def judge_answer(req: GenRequest) -> str:
    """A JANUS-shaped verdict whose score depends on the rubric shown (rubric i -> score i+2)."""
    user = req.messages[-1]["content"]
    criteria = re.search(r'"criteria": "(.*?)",', user).group(1)
    rubrics = json.loads(EXAMPLE.read_text())["rubric"]
    index = [r["criteria"] for r in rubrics].index(criteria)
    return f"Feedback: compared with the reference answer (Score 5), it is fair. [RESULT] {index + 1}"


class RubricScriptedJudge(ScriptedBackend):
    name = "rubric-scripted-judge"

    def __init__(self, model="judge", **kw):
        super().__init__(model, answer=judge_answer, **kw)


def test_bench_runs_through_pipeline(tmp_path, data_dir):
    BACKENDS.register("scripted-test", ScriptedBackend)
    BACKENDS.register("rubric-scripted-judge", RubricScriptedJudge)
    if "multifaceted_rubric" not in JUDGES.names():
        JUDGES.register("multifaceted_rubric", RubricJudge)
    record = json.loads(EXAMPLE.read_text())
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(dict(record, id=f"x{k}", source=s)) + "\n"
                             for k, s in enumerate(["koala", "flask", "koala"])))
    cfg = parse_config({
        "name": "mf", "data_dir": str(data_dir),
        "models": [{"name": "m1", "backend": "scripted-test", "model": "a"}],
        "judge": {"name": "j", "backend": "rubric-scripted-judge", "model": "judge"},
        "tasks": [{"name": "multifaceted_bench", "options": {"path": str(bench), "n_boot": 50}}],
    })
    out = asyncio.run(run_all(cfg, tmp_path / "run"))
    res = out["results"]["multifaceted_bench"]["m1"]
    # rubric i scores i+1 in every run: instance score = mean(1,2,3,4) = 2.5, dim i = i+1
    assert res["n"] == 3 and res["score"] == 2.5 and [res[f"dim{i}"] for i in range(4)] == [1, 2, 3, 4]
    assert res["source.koala"] == res["source.flask"] == 2.5 and res["n_failed"] == 0
    samples = [json.loads(x) for x in (tmp_path / "run/samples/multifaceted_bench.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(len(s["judgments"]) == 12 and s["score"] == 2.5 for s in samples)
    # the prompt each stored judgment was sent with is the JANUS template filled with its fields
    # (test_multifaceted_judge checks render_judge_messages against the published template text)
    store = RunStore(tmp_path / "run")
    completions = {c.key: c for c in store.all("completion")}
    judgments = store.all("judgment")
    assert len(judgments) == 36
    for j in judgments:
        rubric = record["rubric"][int(j.criterion[len("rubric"):].split("/")[0])]
        expected = render_judge_messages(record["prompt"], completions[j.completion_key].text,
                                         record["reference_answer"], rubric)
        assert store.judge_prompt(j) == expected
    store.close()
