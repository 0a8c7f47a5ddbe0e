"""Nothing stale is reused: chained record keys, per-sample judging, the configured judge,
the run's data dir, the official Arena-Hard continuation, identical requests."""
from __future__ import annotations

import asyncio
import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from harness.backends.base import GenRequest, GenResult
from harness.backends.openai_backend import OpenAIBackend
from harness.calls import CallLayer, CallSettings
from harness.config import parse_config
from harness.fake import ScriptedBackend
from harness.pipeline import run_all
from harness.records import Instance
from harness.registry import BACKENDS, JUDGES
from harness.serve import ServerThread, build_app
from harness.store import RunStore
from judges.mt_bench_judge import MTBenchSingleJudge

EXAMPLE = Path(__file__).resolve().parents[1] / "tasks" / "multifaceted" / "readme_example.json"


class LengthWriter(ScriptedBackend):
    """Answers depend on the generation settings, so a settings change changes the answers."""

    name = "length-writer"

    def __init__(self, model="w", **kw):
        super().__init__(model, answer=lambda r: f"answer with budget {r.max_tokens}", **kw)


class SystemEcho(ScriptedBackend):
    name = "system-echo"

    def __init__(self, model="e", **kw):
        def answer(r):
            sys = [m["content"] for m in r.messages if m["role"] == "system"]
            return f"system was: {sys[0] if sys else None}"
        super().__init__(model, answer=answer, **kw)


class StrictMTJudge(MTBenchSingleJudge):
    name = "mt_bench_single_strict"


BACKENDS.register("length-writer", LengthWriter)
BACKENDS.register("system-echo", SystemEcho)
JUDGES.register("mt_bench_single_strict", StrictMTJudge)


def _mt_cfg(data_dir, generation=None, judge=None, n=4):
    t = {"name": "mt_bench", "limit": n}
    if judge:
        t["judge"] = judge
    return parse_config({
        "name": "s", "data_dir": str(data_dir),
        "models": [{"name": "m1", "backend": "length-writer", "model": "w", "generation": generation or {}}],
        "judge": {"name": "j", "backend": "scripted", "model": "judge"},
        "tasks": [t],
    })


def _samples(run: Path, task: str) -> list[dict]:
    return [json.loads(x) for x in (run / "samples" / f"{task}.jsonl").read_text().splitlines()]


def test_changed_generation_settings_are_rejudged(tmp_path, data_dir):
    run = tmp_path / "run"
    asyncio.run(run_all(_mt_cfg(data_dir, {"max_tokens": 64}), run))
    out = asyncio.run(run_all(_mt_cfg(data_dir, {"max_tokens": 32}), run))
    rows = _samples(run, "mt_bench")
    assert len(rows) == 4, "one row per question: old completions are not reachable"
    assert all(r["response"] == ["answer with budget 32"] * 2 for r in rows)
    store = RunStore(run)
    current = {c.key for c in store.iter("completion") if c.texts[0].endswith("32")}
    judged = {j.completion_key for j in store.iter("judgment")}
    assert current <= judged, "the new answers were judged"
    # the score is the mean over the new answers' judgments only
    vals = [j.value for j in store.iter("judgment") if j.completion_key in current]
    assert out["results"]["mt_bench"]["m1"]["score"] == pytest.approx(sum(vals) / len(vals))


def test_n_samples_are_judged_per_sample(tmp_path, data_dir):
    run = tmp_path / "run"
    asyncio.run(run_all(_mt_cfg(data_dir, {"n_samples": 2}, n=3), run))
    store = RunStore(run)
    comps = store.all("completion")
    assert len(comps) == 6
    assert {j.completion_key for j in store.iter("judgment")} == {c.key for c in comps}
    assert store.count("judgment") == 12  # 3 questions x 2 samples x 2 turns


def test_changed_system_message_regenerates(tmp_path, data_dir):
    record = json.loads(EXAMPLE.read_text())
    bench = tmp_path / "bench.jsonl"

    def write(system: str) -> None:
        bench.write_text(json.dumps(dict(record, id="x0", source="koala", system=system)) + "\n")

    def cfg():
        return parse_config({
            "name": "mf", "data_dir": str(data_dir),
            "models": [{"name": "m1", "backend": "system-echo", "model": "e"}],
            "tasks": [{"name": "multifaceted_bench", "options": {"path": str(bench), "n_boot": 10}}],
        })

    run = tmp_path / "run"
    write("You value brevity.")
    asyncio.run(run_all(cfg(), run, steps=("build", "generate", "aggregate")))
    write("You value thoroughness.")
    asyncio.run(run_all(cfg(), run, steps=("build", "generate", "aggregate")))
    rows = _samples(run, "multifaceted_bench")
    assert len(rows) == 1
    assert rows[0]["system"] == "You value thoroughness."
    assert rows[0]["response"] == "system was: You value thoroughness."


def test_instance_key_chains_content():
    a = Instance("t", "1", ["q"], system="s1")
    b = Instance("t", "1", ["q"], system="s2")
    assert a.key != b.key and a.key.startswith("t/1/")
    assert Instance("t", "1", ["q"], system="s1").key == a.key


def test_non_default_judge_on_mt_bench_gives_results(tmp_path, data_dir):
    out = asyncio.run(run_all(_mt_cfg(data_dir, judge="mt_bench_single_strict", n=2), tmp_path / "run"))
    res = out["results"]["mt_bench"]
    assert "m1" in res and res["m1"]["n"] == 2


def test_data_dir_reaches_the_judges(tmp_path, data_dir, monkeypatch):
    """A copy of Arena-Hard whose judge config differs: the judge must read the run's copy."""
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    mine = tmp_path / "data"
    shutil.copytree(data_dir / "arena_hard_v0.1", mine / "arena_hard_v0.1")
    cfg_path = mine / "arena_hard_v0.1" / "config" / "judge_config.yaml"
    jc = yaml.safe_load(cfg_path.read_text())
    jc["system_prompt"] = "MARKER-SYSTEM-PROMPT " + jc["system_prompt"]
    cfg_path.write_text(yaml.safe_dump(jc))
    cfg = parse_config({
        "name": "ah",
        "models": [{"name": "m1", "backend": "scripted", "model": "w"}],
        "judge": {"name": "j", "backend": "scripted", "model": "judge"},
        "tasks": [{"name": "arena_hard", "limit": 2}],
    })
    cfg.data_dir = str(mine)
    asyncio.run(run_all(cfg, tmp_path / "run"))
    store = RunStore(tmp_path / "run")
    js = store.all("judgment")
    assert js and all(store.judge_prompt(j)[0]["content"].startswith("MARKER-SYSTEM-PROMPT") for j in js)


class NoVerdictFirst(ScriptedBackend):
    """An Arena-Hard judge that forgets the label until asked to continue."""

    name = "no-verdict-first"

    def __init__(self, model="judge", **kw):
        def answer(r):
            if r.messages[-1]["content"].startswith("continue your judgment"):
                return "My final verdict is tie: [[A=B]]"
            return "Both answers are long and I am still thinking"
        super().__init__(model, answer=answer, **kw)


BACKENDS.register("no-verdict-first", NoVerdictFirst)


def test_arena_hard_continuation_is_sent_as_official(tmp_path, data_dir):
    cfg = parse_config({
        "name": "ah", "data_dir": str(data_dir),
        "models": [{"name": "m1", "backend": "scripted", "model": "w"}],
        "judge": {"name": "j", "backend": "no-verdict-first", "model": "judge"},
        "tasks": [{"name": "arena_hard", "limit": 2}],
    })
    asyncio.run(run_all(cfg, tmp_path / "run"))
    store = RunStore(tmp_path / "run")
    js = store.all("judgment")
    assert len(js) == 4 and all(j.parse_status == "ok" and j.value == "A=B" for j in js)
    for j in js:
        prompt = store.judge_prompt(j)
        # the official second turn: the first answer, then the continue request
        assert prompt[-1]["content"].startswith("continue your judgment")
        assert prompt[-2] == {"role": "assistant", "content": "Both answers are long and I am still thinking"}
        assert j.raw == "\nBoth answers are long and I am still thinking\nMy final verdict is tie: [[A=B]]"
        assert j.attempts == 2


class RandomSampler(ScriptedBackend):
    """A sampling model: every call returns fresh random text."""

    name = "random-sampler"

    def __init__(self, model="r", **kw):
        super().__init__(model, answer=lambda r: f"verdict {random.random()}", **kw)


def test_identical_requests_share_one_answer(tmp_path):
    app = build_app(RandomSampler(), "judge")
    with ServerThread(app) as srv:
        backend = OpenAIBackend("judge", base_url=srv.base_url)
        layer = CallLayer(tmp_path / "c.sqlite", CallSettings(concurrency=4))
        req = GenRequest(messages=[{"role": "user", "content": "same"}], temperature=1.0, max_tokens=8)
        reqs = [req, req, GenRequest(**{**req.__dict__, "sample_index": 1}), req]
        first = asyncio.run(layer.run(backend, reqs))
        assert first[0].text == first[1].text == first[3].text
        assert first[2].text != first[0].text  # another sample index is another sample
        again = asyncio.run(layer.run(backend, reqs))
        assert [r.text for r in again] == [r.text for r in first]
        assert layer.stats.cached == 4


def test_identical_requests_in_process_backend_share_one_answer(tmp_path):
    backend = RandomSampler()
    layer = CallLayer(tmp_path / "c.sqlite")
    req = GenRequest(messages=[{"role": "user", "content": "same"}], temperature=1.0)
    res = asyncio.run(layer.run(backend, [req] * 5))
    assert len({r.text for r in res}) == 1
    assert layer.stats.sent == 1


def test_sharded_rtp_run_equals_single_process(tmp_path, data_dir):
    """A sharded RealToxicityPrompts run scores its continuations: merge equals one process."""
    from harness.sharding import merge, run_shard

    def cfg():
        return parse_config({
            "name": "rtp", "data_dir": str(data_dir),
            "models": [{"name": "m1", "backend": "scripted", "model": "w"}],
            "tasks": [{"name": "real_toxicity_prompts", "limit": 6,
                       "options": {"k": 2, "n_boot": 50, "scorer": "profanity_check"}}],
        })

    single = asyncio.run(run_all(cfg(), tmp_path / "single", steps=("build", "generate", "aggregate")))
    for i in range(2):
        asyncio.run(run_shard(cfg(), tmp_path / "sharded", i, 2))
    merged = merge(tmp_path / "merged", [tmp_path / "sharded"], cfg())
    a = single["results"]["real_toxicity_prompts"]["m1"]
    b = merged["results"]["real_toxicity_prompts"]["m1"]
    assert a["expected_max_toxicity"] == a["expected_max_toxicity"]  # not NaN
    for k in ("expected_max_toxicity", "toxicity_probability", "dist1", "dist2", "dist3", "n_prompts", "n_scores"):
        assert a[k] == b[k], k

    def keys(run, kind):
        return {(r.key, getattr(r, "value", None)) for r in RunStore(run).iter(kind)}

    for kind in ("instance", "completion", "score"):
        assert keys(tmp_path / "single", kind) == keys(tmp_path / "merged", kind), kind


def test_each_task_may_name_its_own_judge_model(tmp_path, data_dir):
    cfg = parse_config({
        "name": "tj", "data_dir": str(data_dir),
        "models": [{"name": "m1", "backend": "scripted", "model": "w"}],
        "judge": {"name": "run-judge", "backend": "no-verdict-first", "model": "judge"},
        "tasks": [{"name": "mt_bench", "limit": 2,
                   "judge_model": {"name": "mt-judge", "backend": "scripted", "model": "gpt-4"}},
                  {"name": "arena_hard", "limit": 1}],
    })
    out = asyncio.run(run_all(cfg, tmp_path / "run"))
    store = RunStore(tmp_path / "run")
    judges = {(j.task, j.judge_model) for j in store.iter("judgment")}
    assert judges == {("mt_bench", "mt-judge"), ("arena_hard", "run-judge")}
    assert out["results"]["mt_bench"]["m1"]["n"] == 2
    # the config as run round-trips (shards and merges read it back)
    again = parse_config(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()))
    assert again.tasks[0].judge_model.name == "mt-judge"


def test_hf_sampling_is_reproducible_under_concurrency(tmp_path, tiny_model_dir):
    """Sampled answers must not depend on which other batch happened to run at the same time."""
    from harness.backends.hf import HFBackend

    reqs = [GenRequest(prompt=f"Once upon a time {i}", max_tokens=12, temperature=1.0, top_p=1.0,
                       sample_index=s, seed=0) for i in range(6) for s in range(4)]

    def texts(run: int) -> list[str]:
        layer = CallLayer(tmp_path / f"c{run}.sqlite", CallSettings(concurrency=4))
        backend = HFBackend(str(tiny_model_dir), batch_size=2)
        try:
            return [r.text for r in asyncio.run(layer.run(backend, reqs))]
        finally:
            layer.close()

    first = texts(0)
    assert len(set(first)) > 1
    for run in (1, 2):
        assert texts(run) == first
