"""`harness bench build multifaceted`: stratified --limit, build_report.json, and (slow) the embedded SmolLM2."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from harness.backends.base import Backend, GenResult
from harness.registry import BACKENDS
from tasks.multifaceted import prompts as P
from tasks.multifaceted.build import build_from_config
from tasks.multifaceted.release import load_instances
from tasks.multifaceted.sources import DEFAULT_TARGETS, SOURCES, stratified_targets

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS: Counter = Counter()
BAD: list[str] = []  # preference-set prompts containing one of these never parse


class StageGen(Backend):
    """Valid stage outputs of 10 tokens each; preference sets of instructions in BAD never parse."""

    name = "embedded-build-stage-gen"
    default_concurrency = 2

    async def generate(self, requests):
        out = []
        for r in requests:
            system, user = r.messages[0]["content"], r.messages[-1]["content"]
            if r.json_schema is not None:
                SCHEMAS[r.json_schema["title"]] += 1
            if system == P.SYSTEM_PROMPT_PREFERENCE_SET:
                text = "no json" if any(b in user for b in BAD) else json.dumps({"preference_set": [
                    {"dimension": d, "subdimension": "sub", "preference": f"likes {d}", "description": "desc"}
                    for d in P.DIMENSIONS]})
            elif system == P.SYSTEM_PROMPT_RUBRIC_GENERATION_SINGLE_PREFERENCE:
                text = json.dumps({"criteria": "c", "score_descriptions": {str(k): f"s{k}" for k in range(1, 6)}})
            elif system == P.SYSTEM_PROMPT_SYSTEM_MESSAGE:
                text = "You are a careful assistant who writes with style."
            else:
                text = "A reference answer."
            out.append(GenResult(text=text, completion_tokens=10, finish_reason="stop"))
        return out


BACKENDS.register(StageGen.name, StageGen)


def test_stratified_targets_follow_the_mix():
    assert stratified_targets(DEFAULT_TARGETS, 20) == {"mt_bench": 2, "self_instruct": 4, "koala": 2, "flask": 7,
                                                        "alpaca_eval_2": 5}
    assert stratified_targets(DEFAULT_TARGETS, 5) == dict.fromkeys(DEFAULT_TARGETS, 1)
    assert sum(stratified_targets(DEFAULT_TARGETS, 3).values()) == 3
    assert stratified_targets({"koala": 2, "flask": 2}, 10) == {"koala": 2, "flask": 2}
    with pytest.raises(ValueError, match="explicit counts"):
        stratified_targets({"koala": -1}, 3)


def _config(tmp_path, data_dir, targets: str = "") -> Path:
    cfg = tmp_path / "build.yaml"
    cfg.write_text(f"name: t\nseed: 5\ndata_dir: {data_dir}\n{targets}"
                   f"generator: {{backend: {StageGen.name}, model: g}}\ncalls: {{concurrency: 2, parse_retries: 1}}\n")
    return cfg


def test_limit_is_a_seeded_stratified_sample_of_the_default_mix(tmp_path, data_dir):
    cfg = _config(tmp_path, data_dir)
    a = load_instances(build_from_config(str(cfg), str(tmp_path / "a"), limit=10))
    b = load_instances(build_from_config(str(cfg), str(tmp_path / "b"), limit=10))
    # the default mix (80/191/100/300/250) over 10: every source, mostly FLASK and AlpacaEval
    assert Counter(i.source for i in a) == Counter({"flask": 3, "alpaca_eval_2": 3, "self_instruct": 2,
                                                    "mt_bench": 1, "koala": 1})
    assert [i.id for i in a] == [i.id for i in b]
    assert set(SOURCES) == {i.source for i in a}


def test_build_report_measures_the_build(tmp_path, data_dir):
    from tasks.multifaceted.sources import build_pool, sample_instructions

    SCHEMAS.clear()
    cfg = _config(tmp_path, data_dir, "targets: {mt_bench: 4, koala: 4}\n")
    bad = sample_instructions(build_pool(data_dir), {"mt_bench": 4, "koala": 4}, seed=5)[5]
    BAD[:] = [bad.turns[0]]
    try:
        out = build_from_config(str(cfg), str(tmp_path / "out"))
    finally:
        BAD.clear()
    report = json.loads((out.parent / "build_report.json").read_text())
    assert [f["id"] for f in report["failures"]] == [bad.id]
    assert report["instances"] == 8 and report["valid"] == 7 and report["valid_share"] == 0.875
    assert report["stage_counts"]["preference_set"] == {"ok": 7, "failed": 1, "not_generated": 0}
    assert report["stage_counts"]["rubrics"] == {"ok": 28, "failed": 0, "not_generated": 0}
    assert report["stage_counts"]["reference"]["ok"] == 7
    # tokens: 10 per call; the failed one was asked twice (parse_retries 1); identical prompts share calls,
    # but every stage record counts what its answer cost
    per_valid = 10 * (1 + 1 + 4 + 1)
    assert report["generated_tokens"] == 7 * per_valid + 20
    assert report["valid_token_share"] == round(7 * per_valid / (7 * per_valid + 20), 4)
    assert report["valid_instances_per_minute"] > 0 and report["by_source"]["koala"] == {"instances": 4, "valid": 3}
    # every JSON stage carried its schema
    assert SCHEMAS["preference_set"] == 8 + 1 and SCHEMAS["rubric"] >= 1
    # a rerun has nothing to generate: no instances per minute to claim
    build_from_config(str(cfg), str(tmp_path / "out"))
    again = json.loads((out.parent / "build_report.json").read_text())
    assert again["valid"] == 7 and again["valid_instances_per_minute"] == 0


class Truncating(StageGen):
    """Preference sets need 100 tokens: a smaller budget cuts the JSON (finish_reason length)."""

    name = "embedded-build-truncating-gen"
    budgets: list = []

    async def generate(self, requests):
        out = await super().generate(requests)
        for r, res in zip(requests, out):
            if r.messages[0]["content"] == P.SYSTEM_PROMPT_PREFERENCE_SET:
                self.budgets.append(r.max_tokens)
                if r.max_tokens < 100:
                    res.text, res.finish_reason = res.text[:len(res.text) // 2], "length"
        return out


BACKENDS.register(Truncating.name, Truncating)


def test_json_cut_by_the_token_budget_is_reasked_with_twice_the_budget(tmp_path, data_dir):
    cfg = tmp_path / "build.yaml"
    cfg.write_text(f"name: t\nseed: 5\ndata_dir: {data_dir}\ntargets: {{koala: 1}}\n"
                   f"generator: {{backend: {Truncating.name}, model: g, generation: {{max_tokens: 60}}}}\n"
                   "calls: {parse_retries: 2}\n")
    Truncating.budgets.clear()
    out = build_from_config(str(cfg), str(tmp_path / "out"))
    assert Truncating.budgets == [60, 120] and len(load_instances(out)) == 1
    # with no re-ask left, the failure says why
    cfg.write_text(cfg.read_text().replace("parse_retries: 2", "parse_retries: 0"))
    build_from_config(str(cfg), str(tmp_path / "out2"))
    report = json.loads((tmp_path / "out2" / "build_report.json").read_text())
    assert "cut at max_tokens=60" in report["failures"][0]["reason"]


@pytest.mark.slow
def test_embedded_smollm2_builds_valid_instances(tmp_path, data_dir):
    """The demo config on the real SmolLM2-135M: constrained decoding makes the JSON stages valid."""
    from harness.models import default_model_dir

    if not (default_model_dir() / "config.json").exists():
        pytest.skip("embedded model not prepared (harness models prepare)")
    demo = (ROOT / "configs" / "multifaceted_build_demo.yaml").read_text()
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(demo.replace("out: runs/multifaceted_build_demo", f"data_dir: {data_dir}"))
    out = build_from_config(str(cfg), str(tmp_path / "out"), limit=2)
    report = json.loads((out.parent / "build_report.json").read_text())
    assert report["instances"] == 2 and report["valid"] == 2, report["failures"]
    assert all(len(i.rubrics) == 4 for i in load_instances(out))
