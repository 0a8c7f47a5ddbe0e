"""The synthesis pipeline with a scripted generator: build, re-ask, failure report, resume."""
from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from harness.backends.base import Backend, GenResult
from harness.calls import CallLayer, CallSettings
from harness.registry import BACKENDS
from tasks.multifaceted import prompts as P
from tasks.multifaceted.release import load_instances
from tasks.multifaceted.sources import build_pool, sample_instructions
from tasks.multifaceted.synth import (
    BenchBuilder, BuildSettings, StageStore, build_from_config, extract_json, write_outputs)

TARGETS = {"mt_bench": 1, "self_instruct": 1, "koala": 1, "flask": 1, "alpaca_eval_2": 1}


class Killed(BaseException):
    """Stands in for the process being killed mid-stage."""


def stage_of(messages) -> str:
    system = messages[0]["content"]
    if system == P.SYSTEM_PROMPT_PREFERENCE_SET:
        return "preference_set"
    if system == P.SYSTEM_PROMPT_SYSTEM_MESSAGE:
        return "system"
    if system == P.SYSTEM_PROMPT_RUBRIC_GENERATION_SINGLE_PREFERENCE:
        return "rubric"
    return "reference"


class ScriptedGenerator(Backend):
    """Canned well-formed JSON/text per stage; malformed for chosen instructions."""

    name = "scripted-gen"
    default_concurrency = 4

    def __init__(self, model="gen", always_bad=(), bad_first=(), crash_on=None, **options):
        super().__init__(model, **options)
        self.always_bad, self.bad_first, self.crash_on = set(always_bad), set(bad_first), crash_on
        self.calls = Counter()
        self.prefilled = Counter()

    def _text(self, stage, req) -> str:
        user = [m for m in req.messages if m["role"] == "user"][-1]["content"]
        if stage == "preference_set":
            if any(b in user for b in self.always_bad) or (req.attempt == 0 and any(b in user for b in self.bad_first)):
                return "Sure! Here are some preferences: style is nice."  # no JSON
            prefs = [{"dimension": d, "subdimension": f"{d}-sub", "preference": f"likes {d}",
                      "description": f"The user wants {d} handled with care."} for d in P.DIMENSIONS]
            return "```json\n" + json.dumps({"preference_set": prefs}) + "\n```"
        if stage == "system":
            return "You are an assistant who values clear style, background, information and safety."
        if stage == "rubric":
            pref = json.loads(user.split("# Preference\n", 1)[1].split("\n\n# Generated rubric:")[0])
            return json.dumps({"criteria": f"Does the response honour {pref['preference']}?",
                               "score_descriptions": {str(k): f"level {k}" for k in range(1, 6)}}, indent=4)
        return "A reference answer under the system message."

    async def generate(self, requests):
        out = []
        for r in requests:
            stage = stage_of(r.messages)
            if stage == self.crash_on:
                raise Killed()
            self.calls[stage] += 1
            text = self._text(stage, r)
            if r.continue_final_message:  # a prefilled answer: return only the continuation
                prefix = r.messages[-1]["content"]
                text = text.removeprefix("```json\n").removesuffix("\n```")
                assert r.messages[-1]["role"] == "assistant" and text.startswith(prefix)
                self.prefilled[stage] += 1
                text = text[len(prefix):]
            out.append(GenResult(text=text, finish_reason="stop"))
        return out


@pytest.fixture(scope="module")
def instructions(data_dir):
    return sample_instructions(build_pool(data_dir), TARGETS, seed=3)


def _build(tmp_path, backend, instances, cache="cache.sqlite", **settings):
    store = StageStore(tmp_path / "run")
    calls = CallLayer(tmp_path / cache, CallSettings(concurrency=4, parse_retries=2, max_retries=0))
    try:
        builder = BenchBuilder(store, calls, backend, BuildSettings(max_tokens=256, **settings))
        summary = asyncio.run(builder.run(instances))
        records, failures = builder.assemble(instances)
        return summary, records, failures, store
    finally:
        calls.close()


def test_build_reasks_reports_failures_and_writes_valid_files(tmp_path, instructions):
    bad, flaky = instructions[0], instructions[1]
    gen = ScriptedGenerator(always_bad=[bad.turns[0]], bad_first=[flaky.turns[0]])
    summary, records, failures, store = _build(tmp_path, gen, instructions)
    # the always-malformed instruction: asked 3 times (1 + 2 re-asks), then reported, never in the bench
    assert [f["id"] for f in failures] == [bad.id] and failures[0]["stage"] == "preference_set"
    assert "no JSON object found" in failures[0]["reason"] and "3 attempt" in failures[0]["reason"]
    assert summary["preference_set"] == {"todo": 5, "ok": 4, "failed": 1}
    assert gen.calls["preference_set"] == 5 + 2 + 1  # 5 first asks, 2 re-asks of bad, 1 of flaky
    assert summary["rubrics"] == {"todo": 16, "ok": 16, "failed": 0}
    assert {r["id"] for r in records} == {i.id for i in instructions} - {bad.id}
    out = write_outputs(tmp_path / "run", records, failures, summary)
    built = load_instances(out)  # validates: 4 rubrics x 5 descriptions, non-empty system and reference
    assert len(built) == 4 and all(len(i.rubrics) == 4 for i in built)
    by_id = {i.id: i for i in instructions}
    for inst in built:
        assert inst.turns == by_id[inst.id].turns and inst.source == by_id[inst.id].source
        assert [p["dimension"] for p in inst.metadata["preference_set"]] == P.DIMENSIONS
        assert inst.metadata["provenance"] == by_id[inst.id].metadata["provenance"]
    report = json.loads((tmp_path / "run" / "build_report.json").read_text())
    assert (report["valid"], report["failed"]) == (4, 1) and report["failures"][0]["id"] == bad.id
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "run" / "multifaceted_bench.parquet"),
                               split="train")
    assert sorted(ds["id"]) == sorted(r["id"] for r in records) and len(ds[0]["rubrics"]) == 4
    store.close()


def test_resume_after_kill_does_not_redo_finished_stages(tmp_path, instructions):
    first = ScriptedGenerator(crash_on="reference")
    with pytest.raises(Killed):
        _build(tmp_path, first, instructions)
    # the scripted preference sets are the same for every instruction, so their rubric prompts are
    # identical, and so are their system-message prompts: one call per distinct prompt, shared by
    # all five (identical requests share one answer)
    assert first.calls["preference_set"] == 5 and first.calls["rubric"] == 4 and first.calls["system"] == 1
    # a fresh process, and even a fresh call cache: finished stages come from the stored records
    second = ScriptedGenerator()
    summary, records, failures, store = _build(tmp_path, second, instructions, cache="other-cache.sqlite")
    assert second.calls == Counter({"reference": 5})
    assert summary["preference_set"]["todo"] == summary["system"]["todo"] == summary["rubrics"]["todo"] == 0
    assert len(records) == 5 and failures == []
    store.close()
    # a third run has nothing left to do
    third = ScriptedGenerator()
    _, again, _, store = _build(tmp_path, third, instructions, cache="third.sqlite")
    assert sum(third.calls.values()) == 0 and again == records
    store.close()


def test_build_from_config_end_to_end(tmp_path, data_dir):
    BACKENDS.register("scripted-gen-test", ScriptedGenerator)
    cfg = tmp_path / "build.yaml"
    cfg.write_text(
        f"name: t\nseed: 1\ndata_dir: {data_dir}\n"
        "targets: {mt_bench: 2, self_instruct: 1, koala: 1, flask: 1, alpaca_eval_2: 1}\n"
        "generator: {backend: scripted-gen-test, model: gen, generation: {max_tokens: 64}}\n"
        "calls: {concurrency: 2, parse_retries: 1}\n")
    out = build_from_config(str(cfg), str(tmp_path / "out"), limit=4)
    # --limit: a stratified sample in the config's mix (not the first rows, which were all MT-Bench)
    assert [i.source for i in load_instances(out)] == ["mt_bench", "self_instruct", "koala", "flask"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ngenerater: {}\n")
    with pytest.raises(ValueError, match="unknown field"):
        build_from_config(str(bad), str(tmp_path / "out2"))


def test_prefill_starts_json_answers(tmp_path, instructions):
    gen = ScriptedGenerator()
    _, records, failures, store = _build(tmp_path, gen, instructions, prefill=True, structured=False)
    assert failures == [] and len(records) == 5
    assert gen.prefilled == Counter({"preference_set": 5, "rubric": 4})  # identical rubric prompts: one call
    store.close()
    # prefill is part of the stage config: a build without it does not reuse these records
    plain = ScriptedGenerator()
    _build(tmp_path, plain, instructions, cache="plain.sqlite", structured=False)[3].close()
    assert plain.calls["preference_set"] == 5 and plain.prefilled == Counter()


def test_extract_json_skips_chatter():
    assert extract_json('Here: {"a": [1, 2]} and more {"b": 1}') == {"a": [1, 2]}
    assert extract_json("[note] ```json\n[1, 2]\n```") == [1, 2]
    with pytest.raises(ValueError):
        extract_json("no json here")


def test_demo_config_is_valid(data_dir):
    from pathlib import Path

    from tasks.multifaceted.sources import SOURCES
    from tasks.multifaceted.synth import load_build_config

    cfg = load_build_config(Path(__file__).resolve().parents[1] / "configs" / "multifaceted_build_demo.yaml")
    assert set(cfg["targets"]) == set(SOURCES) and sum(cfg["targets"].values()) == 20
    BuildSettings(**{**cfg["generator"]["generation"], **cfg["build"]})
    picked = sample_instructions(build_pool(data_dir), cfg["targets"], seed=cfg["seed"])
    assert len(picked) == 20 and {i.source for i in picked} == set(SOURCES)
