"""Best-of-n reranking: the bucketed scorer, the best-of-k estimator, virtual models, resume and rescoring."""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import threading
from pathlib import Path

import pytest

from harness.backends.base import GenRequest
from harness.fake import ScriptedBackend
from harness.records import Instance
from harness.registry import BACKENDS, JUDGES
from support.reward_models import build_seq_cls_rm

EXAMPLE = Path(__file__).resolve().parents[1] / "tasks" / "multifaceted" / "readme_example.json"


# ----------------------------------------------------------------------------------------------
# tiny reward models of both layouts, built from the tiny causal LM
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seq_cls_rm(tiny_model_dir, tmp_path_factory) -> Path:
    return build_seq_cls_rm(tiny_model_dir, tmp_path_factory.mktemp("rm") / "seqcls-rm")


@pytest.fixture(scope="module")
def value_head_rm(tiny_model_dir, tmp_path_factory) -> Path:
    """OpenRLHF / JANUS-RM layout: the base model's weights under 'model.', a bias-free 'value_head'."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, LlamaModel

    out = tmp_path_factory.mktemp("rm") / "janus-rm"
    out.mkdir()
    torch.manual_seed(5)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    base = LlamaModel(config)
    state = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
    state["value_head.weight"] = torch.randn(1, config.hidden_size)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["LlamaForCausalLM"]
    config.mean, config.std = 0.1, 1.5
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _triples(data_dir, n_prompts=6, per_prompt=4) -> list[tuple]:
    """Real MT-Bench questions and several models' answers (cut short): varied lengths, like a pool."""
    root = data_dir / "mt_bench"
    questions = [json.loads(x) for x in (root / "question.jsonl").read_text().splitlines()][:n_prompts]
    answers = {}
    for f in sorted((root / "model_answer").glob("*.jsonl"))[:per_prompt]:
        for line in f.read_text().splitlines():
            a = json.loads(line)
            answers.setdefault(a["question_id"], []).append(a["choices"][0]["turns"][0])
    rng = random.Random(0)
    out = []
    for q in questions:
        for text in answers[q["question_id"]][:per_prompt]:
            out.append(("The user prefers concise answers.", q["turns"][0][:200], text[: rng.randint(5, 300)]))
    return out


# ----------------------------------------------------------------------------------------------
# bucketed batch scorer == one-at-a-time scoring
# ----------------------------------------------------------------------------------------------
def test_plan_batches_respects_the_token_budget():
    from harness.backends.rm_batching import plan_batches

    rng = random.Random(1)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    batches = plan_batches(lengths, max_tokens=1000, max_batch=16)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * width <= 1000
        assert len(b) <= 16
    # similar lengths share a batch: batches are contiguous in length order
    assert [max(lengths[i] for i in b) for b in batches] == sorted((max(lengths[i] for i in b) for b in batches),
                                                                    reverse=True)
    assert plan_batches([5000], max_tokens=100) == [[0]]  # too long for the budget: alone, not dropped
    with pytest.raises(ValueError, match="max_tokens"):
        plan_batches([1], max_tokens=0)


@pytest.mark.parametrize("layout", ["seq_cls_rm", "value_head_rm"])
@pytest.mark.parametrize("mode", ["padded", "cpu-default", "cpu-1-worker", "cpu-3-workers", "cuda-default"])
def test_bucketed_scorer_equals_one_at_a_time(layout, mode, request, data_dir):
    from harness.backends.rm_batching import BucketedScorer, plan_batches, score_one_at_a_time, score_per_prompt
    from harness.backends.reward_model import SEQ_CLS, VALUE_HEAD, load_reward_model

    rm = load_reward_model(request.getfixturevalue(layout))
    assert rm.kind == (SEQ_CLS if layout == "seq_cls_rm" else VALUE_HEAD)
    triples = _triples(data_dir)
    triples += [triples[0], ("Someone else.", "Hi", triples[3][2])]  # an equal-length pair, a lone prompt
    options = {"padded": dict(pad_tolerance=1.0), "cpu-default": {}, "cpu-1-worker": dict(workers=1),
               "cpu-3-workers": dict(workers=3), "cuda-default": {}}[mode]
    if mode == "cuda-default":  # the planner's default on an accelerator, run here on CPU
        rm.device = "cuda"
        batcher = BucketedScorer(rm, max_tokens=600, max_batch=8)
        rm.device = "cpu"
        assert batcher.pad_tolerance == 1.0 and batcher.workers == 1
    if mode != "cuda-default":
        batcher = BucketedScorer(rm, max_tokens=600, max_batch=8, **options)
    seqs = batcher.encode(triples)
    lengths = [len(s) for s in seqs]
    batches = plan_batches(lengths, 600, 8, batcher.pad_tolerance)
    padded = sum(len(b) > 1 and len({lengths[i] for i in b}) > 1 for b in batches)
    if mode.startswith("cpu"):  # CPU: rows share a batch only at equal length, and then run without a mask
        assert batcher.pad_tolerance == 0.0 and padded == 0 and any(len(b) > 1 for b in batches)
    else:  # the test must exercise padding: several multi-row batches of unequal lengths
        assert padded >= 2
    expected = score_one_at_a_time(rm, triples)
    seen = []  # each finished batch reaches the caller once, in the caller's thread (it stores them)
    got = batcher.score(triples, on_batch=lambda idx, r: seen.append((threading.get_ident(), list(idx), r)))
    assert got == pytest.approx(expected, abs=1e-4)
    assert sorted(i for _, idx, _ in seen for i in idx) == list(range(len(triples)))
    assert {t for t, _, _ in seen} == {threading.get_ident()}
    assert all(got[i] == r for _, idx, rs in seen for i, r in zip(idx, rs))
    assert len(set(round(x, 6) for x in expected)) > len(expected) // 2  # a real signal, not a constant
    # the reference per-prompt batches of 8 give the same rewards too
    per_prompt = score_per_prompt(rm, [triples[i:i + 4] for i in range(0, len(triples), 4)])
    assert [x for g in per_prompt for x in g] == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# best-of-k estimator == brute-force enumeration
# ----------------------------------------------------------------------------------------------
def _brute(rewards, scores, k):
    picks, maxes, agree = [], [], []
    for subset in itertools.combinations(range(len(rewards)), k):
        best = min(subset, key=lambda i: (-rewards[i], i))  # ties: lower sample index
        picks.append(scores[best])
        maxes.append(max(scores[i] for i in subset))
        agree.append(scores[best] == max(scores[i] for i in subset))
    n = len(picks)
    return sum(picks) / n, sum(maxes) / n, sum(agree) / n


def test_best_of_k_estimator_equals_brute_force_enumeration():
    from reports.bestofn import expected_agreement, expected_max, expected_pick_value

    rng = random.Random(7)
    for trial in range(40):
        size = rng.randint(1, 7)
        # small integer ranges make ties in rewards and scores common
        rewards = [float(rng.randint(0, 3 if trial % 2 else 100)) for _ in range(size)]
        scores = [float(rng.randint(1, 5)) for _ in range(size)]
        for k in range(1, size + 1):
            pick, best, agree = _brute(rewards, scores, k)
            assert expected_pick_value(rewards, scores, k) == pytest.approx(pick, abs=1e-12)
            assert expected_max(scores, k) == pytest.approx(best, abs=1e-12)
            assert expected_agreement(rewards, scores, k) == pytest.approx(agree, abs=1e-12)
            assert expected_max(rewards, k) == pytest.approx(_brute(rewards, rewards, k)[0], abs=1e-12)


def test_analysis_curve_and_bad_pools():
    from reports.bestofn import analyze, curve_csv

    rng = random.Random(2)
    table = {f"p{i}": {"rewards": [rng.random() for _ in range(4)], "scores": [float(rng.randint(1, 5)) for _ in range(4)]}
             for i in range(20)}
    table["short"] = {"rewards": [0.5], "scores": [3.0]}
    res = analyze(table, [1, 2, 4], B=200)
    assert res["n_prompts"] == 20 and res["dropped_prompts"] == 1
    curve = {row["n"]: row for row in res["curve"]}
    # best-of-1 is the pool mean; the expected max reward grows with n
    pool_mean = sum(sum(t["rewards"]) / 4 for k, t in table.items() if k != "short") / 20
    assert curve[1]["reward_mean"] == pytest.approx(pool_mean)
    assert curve[1]["reward_mean"] < curve[2]["reward_mean"] < curve[4]["reward_mean"]
    assert curve[1]["agreement_mean"] == 1.0 and curve[4]["oracle_best_mean"] >= curve[4]["score_mean"]
    for row in res["curve"]:
        assert row["reward_lower"] <= row["reward_mean"] <= row["reward_upper"]
    assert curve_csv(res).splitlines()[0].startswith("n,n_prompts,reward_mean,reward_lower,reward_upper,score_mean")
    assert sum(res["reward_distribution"]["histogram"]["counts"]) == 80
    with pytest.raises(ValueError, match="no prompt has 8 scored candidates"):
        analyze(table, [8])


# ----------------------------------------------------------------------------------------------
# end to end: pool -> scores -> @bo<n> models -> judging -> leaderboard
# ----------------------------------------------------------------------------------------------
def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def writer_answer(req: GenRequest) -> str:
    """Candidates of different content and length per sample."""
    d = _digest(f"{req.messages}|{req.sample_index}")
    return " ".join(f"point{(d >> j) % 97}" for j in range(3 + d % 20))


def judge_answer(req: GenRequest) -> str:
    """A rubric verdict that depends on the judged response (and the rubric)."""
    return f"Feedback: fine. [RESULT] {_digest(req.messages[-1]['content']) % 5 + 1}"


class WriterBackend(ScriptedBackend):
    name = "rerank-writer"
    seen: list[GenRequest] = []  # every request sent, for the tests to read

    async def generate(self, requests):
        WriterBackend.seen.extend(requests)
        return await super().generate(requests)

    def __init__(self, model="writer", **kw):
        super().__init__(model, answer=writer_answer, **kw)


class JudgeBackend(ScriptedBackend):
    name = "rerank-judge"

    def __init__(self, model="judge", **kw):
        super().__init__(model, answer=judge_answer, **kw)


@pytest.fixture()
def bench_run(tmp_path, data_dir):
    """A Multifaceted Bench run (3 instances) generated by the pipeline; returns (config, run dir)."""
    from harness.config import parse_config
    from harness.pipeline import run_all
    from judges.rubric_judge import RubricJudge

    BACKENDS.register("rerank-writer", WriterBackend)
    BACKENDS.register("rerank-judge", JudgeBackend)
    if "multifaceted_rubric" not in JUDGES.names():
        JUDGES.register("multifaceted_rubric", RubricJudge)
    record = json.loads(EXAMPLE.read_text())
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(dict(record, id=f"x{k}", prompt=record["prompt"] + f" (variant {k})"))
                             + "\n" for k in range(3)))
    cfg = parse_config({
        "name": "bon", "data_dir": str(data_dir),
        "models": [{"name": "m1", "backend": "rerank-writer", "model": "writer", "generation": {"max_tokens": 64}}],
        "judge": {"name": "j", "backend": "rerank-judge", "model": "judge"},
        "tasks": [{"name": "multifaceted_bench", "options": {"path": str(bench), "n_boot": 20},
                   "judge_options": {"runs": 1}}],
    })
    run_dir = tmp_path / "run"
    asyncio.run(run_all(cfg, run_dir, steps=("build", "generate", "aggregate")))
    return cfg, run_dir


def test_best_of_n_models_are_written_judged_and_ranked(bench_run, seq_cls_rm):
    from harness.calls import CallLayer
    from harness.pipeline import run_all
    from harness.rerank import JANUS_SAMPLING, rerank
    from harness.scorers import make_scorer
    from harness.backends.rm_batching import score_one_at_a_time
    from harness.store import RunStore
    from harness.backends.reward_model import load_reward_model

    cfg, run_dir = bench_run
    scorer = make_scorer(str(seq_cls_rm), max_tokens=400)
    calls = CallLayer(run_dir / "cache.sqlite")
    oracle = make_scorer("judge", run_dir=run_dir, task="multifaceted_bench", calls=calls)
    WriterBackend.seen = []
    res = asyncio.run(rerank(run_dir, scorer, [1, 2, 4], model="m1", oracle=oracle, calls=calls))
    assert res.n_candidates == 12 and res.scored_now == 12 and calls.stats.sent > 0
    names = [f"m1@bo{n}[seqcls-rm]" for n in (1, 2, 4)]
    assert res.virtual_models == {name: 3 for name in names}

    # the candidates stay out of the run store; each virtual model has one completion per instance
    store, pool = RunStore(run_dir), RunStore(run_dir / "candidates")
    cands = [c for c in pool.all("completion") if c.model == "m1"]
    assert len(cands) == 12 and sorted({c.sample_index for c in cands}) == [0, 1, 2, 3]
    # JANUS sampling, with the run config's generation settings for the model on top
    # sample 0 of each instance is the run's own answer (same sampling settings): from the cache
    assert len(WriterBackend.seen) == 9
    assert all((r.temperature, r.top_p, r.repetition_penalty, r.max_tokens) ==
               (JANUS_SAMPLING["temperature"], JANUS_SAMPLING["top_p"], JANUS_SAMPLING["repetition_penalty"], 64)
               for r in WriterBackend.seen)
    assert all(c.model != "m1" or c.sample_index == 0 for c in store.all("completion"))
    # recompute every reward independently and check each pick
    insts = {i.id: i for i in store.all("instance")}
    rm = load_reward_model(seq_cls_rm)
    truth = dict(zip([c.key for c in cands],
                     score_one_at_a_time(rm, [(insts[c.instance_id].system, insts[c.instance_id].turns[0], c.text)
                                              for c in cands])))
    stored = {s.completion_key: s.value for s in pool.all("score") if s.scorer == "seqcls-rm"}
    assert stored == pytest.approx(truth, abs=1e-4)
    for n, name in zip((1, 2, 4), names):
        for comp in store.all("completion", model=name):
            first_n = [c for c in cands if c.instance_id == comp.instance_id and c.sample_index < n]
            best = max(first_n, key=lambda c: (truth[c.key], -c.sample_index))
            meta = comp.metadata["rerank"]
            assert meta["selected_sample"] == best.sample_index and comp.texts == best.texts
            assert meta["n"] == n and len(meta["rewards"]) == n
            assert comp.completion_tokens == sum(c.completion_tokens for c in first_n)

    # analysis files: reward and judge score against n from the one pool
    data = json.loads(Path(res.analysis_files[0]).read_text())
    assert [r["n"] for r in data["curve"]] == [1, 2, 4] and data["meta"]["oracle"] == "judge-multifaceted_rubric"
    assert "score_mean" in Path(res.analysis_files[1]).read_text().splitlines()[0]

    # rescoring the same pool with the same scorer and oracle costs nothing: no model, no call
    sent = calls.stats.sent
    again = asyncio.run(rerank(run_dir, make_scorer(str(seq_cls_rm), max_tokens=400), [1, 2, 4], model="m1",
                               oracle=oracle, calls=calls))
    assert again.scored_now == 0 and calls.stats.sent == sent
    calls.close()
    store.close()
    pool.close()

    # the virtual models run through Multifaceted Bench judging and appear in the leaderboard
    out = asyncio.run(run_all(cfg, run_dir, steps=("judge", "aggregate")))
    results = out["results"]["multifaceted_bench"]
    assert set(results) == {"m1", *names} and all(results[m]["n"] == 3 for m in names)
    board = (run_dir / "leaderboard.md").read_text()
    assert all(name in board for name in names)


def test_pool_grows_and_rescoring_with_another_scorer_does_not_regenerate(bench_run, seq_cls_rm, value_head_rm):
    from harness.calls import CallLayer
    from harness.rerank import rerank
    from harness.scorers import make_scorer
    from harness.store import RunStore

    cfg, run_dir = bench_run
    calls = CallLayer(run_dir / "cache.sqlite")
    asyncio.run(rerank(run_dir, make_scorer(str(seq_cls_rm)), [1, 2], model="m1", calls=calls, analysis=False))
    sent, requests = calls.stats.sent, calls.stats.requests
    pool = RunStore(run_dir / "candidates")
    first = {c.key for c in pool.all("completion")}
    pool.close()
    bo1 = [c.to_dict() for c in RunStore(run_dir).all("completion", model="m1@bo1[seqcls-rm]")]
    # n_max 2 -> 4: the first two samples are kept (same records), only samples 2 and 3 are asked for;
    # the @bo1 and @bo2 models of the smaller pool stay as they were
    res = asyncio.run(rerank(run_dir, make_scorer(str(seq_cls_rm)), [1, 2, 4], model="m1", calls=calls,
                             analysis=False))
    assert res.scored_now == 6 and calls.stats.sent - sent >= 1 and calls.stats.requests - requests == 6
    pool = RunStore(run_dir / "candidates")
    assert first < {c.key for c in pool.all("completion")} and len(pool.all("completion")) == 12
    pool.close()
    assert [c.to_dict() for c in RunStore(run_dir).all("completion", model="m1@bo1[seqcls-rm]")] == bo1
    requests_before = calls.stats.requests
    # another reward model (JANUS-RM layout) rescoring the stored pool: no generation request at all
    res = asyncio.run(rerank(run_dir, make_scorer(str(value_head_rm)), [1, 4], model="m1", calls=calls))
    assert res.scored_now == 12 and calls.stats.requests == requests_before
    assert set(res.virtual_models) == {"m1@bo1[janus-rm]", "m1@bo4[janus-rm]"}
    # and a toxicity scorer as a penalty (higher = less toxic)
    res = asyncio.run(rerank(run_dir, make_scorer("toxicity:profanity_check"), [4], model="m1", calls=calls,
                             analysis=False))
    assert res.scored_now == 12 and calls.stats.requests == requests_before
    pool = RunStore(run_dir / "candidates")
    scorers = {s.scorer for s in pool.all("score")}
    assert scorers == {"seqcls-rm", "janus-rm", "toxicity-profanity_check"}
    assert all(s.value <= 0 for s in pool.all("score") if s.scorer.startswith("toxicity"))
    pool.close()
    calls.close()


class _Killed(Exception):
    pass


def _candidates_file(path: Path, data_dir) -> Path:
    triples = _triples(data_dir, n_prompts=5, per_prompt=4)
    rows = []
    for p in range(5):
        group = triples[p * 4:(p + 1) * 4]
        rows.append({"instance_id": f"q{p}", "system": group[0][0], "prompt": group[0][1],
                     "candidates": [t[2] for t in group]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_kill_during_scoring_then_rerun_scores_only_unscored_candidates(tmp_path, data_dir, value_head_rm):
    from harness.rerank import rerank
    from harness.scorers import make_scorer
    from harness.store import RunStore

    cand_file = _candidates_file(tmp_path / "cands.jsonl", data_dir)
    scorer = make_scorer(str(value_head_rm), max_tokens=300, max_batch=4)
    real_score_ids = scorer.batcher.score_ids
    finished: list[int] = []
    batches = [0]

    def dies_after_two_batches(seqs, on_batch=None):
        def wrapped(idx, rewards):
            on_batch(idx, rewards)
            finished.extend(idx)
            batches[0] += 1
            if batches[0] == 2:
                raise _Killed()
        return real_score_ids(seqs, wrapped)

    scorer.batcher.score_ids = dies_after_two_batches
    with pytest.raises(_Killed):
        asyncio.run(rerank(cand_file, scorer, [1, 2, 4], out=tmp_path / "run"))
    done_before = len(finished)
    assert 0 < done_before < 20
    store = RunStore(tmp_path / "run" / "candidates")
    assert len(store.all("score")) == done_before  # finished batches were stored before the kill
    store.close()
    assert not RunStore(tmp_path / "run").all("completion")  # no half-written virtual models

    fresh = make_scorer(str(value_head_rm), max_tokens=300, max_batch=4)
    res = asyncio.run(rerank(cand_file, fresh, [1, 2, 4], out=tmp_path / "run"))
    assert fresh.scored == 20 - done_before and res.scored_now == 20 - done_before
    assert res.virtual_models == {f"cands@bo{n}[janus-rm]": 5 for n in (1, 2, 4)}
    # a file whose text changed is rescored: scores are keyed by content, not by position
    rows = [json.loads(x) for x in cand_file.read_text().splitlines()]
    rows[0]["candidates"][0] += " (edited)"
    edited = tmp_path / "cands.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = asyncio.run(rerank(edited, make_scorer(str(value_head_rm)), [4], out=tmp_path / "run2"))
    assert res.scored_now == 20


def test_cli_and_clear_errors(tmp_path, data_dir, seq_cls_rm, capsys):
    from harness.cli import main
    from harness.rerank import RerankError, parse_ns

    cand_file = _candidates_file(tmp_path / "pool.jsonl", data_dir)
    rc = main(["rerank", "--candidates", str(cand_file), "--reward-model", str(seq_cls_rm), "--n", "1,2,4",
               "--out", str(tmp_path / "run"), "--scorer-batch-tokens", "500"])
    out = capsys.readouterr().out
    assert rc == 0 and "pool@bo4[seqcls-rm]: 5 completions" in out and "20 scored now" in out
    assert (tmp_path / "run" / "bestofn" / "pool__seqcls-rm.csv").exists()

    assert parse_ns("4,1,2") == [1, 2, 4]
    for bad in ("0,1", "a,b", ""):
        with pytest.raises(RerankError, match="--n"):
            parse_ns(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"candidates": ["a"]}) + "\n")
    rc = main(["rerank", "--candidates", str(broken), "--reward-model", str(seq_cls_rm), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.jsonl: row 1: field 'instance_id' is missing" in err
    rc = main(["rerank", "--candidates", str(tmp_path / "missing"), "--reward-model", str(seq_cls_rm)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["rerank", "--candidates", str(cand_file), "--reward-model", str(tmp_path / "nope"),
               "--out", str(tmp_path / "c")])
    assert rc == 2 and "--reward-model" in capsys.readouterr().err


def _mt_run(tmp_path, turns, generation=None, category="", **model_fields):
    """A run directory holding one instance and a config whose model is the writer."""
    import yaml

    from harness.store import RunStore

    BACKENDS.register("rerank-writer", WriterBackend)
    run_dir = tmp_path / "run"
    store = RunStore(run_dir)
    inst = Instance(task="mt_bench", id="81", turns=turns, system="The user likes short answers.",
                    category=category)
    store.put(inst)
    store.set_current_instances("mt_bench", [inst.key])
    store.close()
    model = {"name": "m1", "backend": "rerank-writer", "model": "writer", "generation": generation or {},
             **model_fields}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": "mt", "models": [model], "tasks": ["mt_bench"]}))
    return run_dir, inst


def test_multi_turn_candidates_are_scored_on_the_whole_conversation(tmp_path, seq_cls_rm):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.rerank import rerank
    from harness.scorers import make_scorer
    from harness.store import RunStore

    run_dir, inst = _mt_run(tmp_path, ["Write a blog post.", "Now rewrite it."], category="math")
    WriterBackend.seen = []
    res = asyncio.run(rerank(run_dir, make_scorer(str(seq_cls_rm)), [1, 2], model="m1", analysis=False))
    assert res.n_candidates == 2 and res.scored_now == 2
    # every turn sampled: MT-Bench's greedy category temperature (math) does not reach a pool
    assert len(WriterBackend.seen) == 4 and all(r.temperature == 1.0 for r in WriterBackend.seen)
    pool = RunStore(run_dir / "candidates")
    cands = sorted(pool.all("completion"), key=lambda c: c.sample_index)
    assert all(len(c.texts) == 2 for c in cands)
    # the reward model reads system, both questions and both answers in its chat template
    tok = AutoTokenizer.from_pretrained(seq_cls_rm)
    model = AutoModelForSequenceClassification.from_pretrained(seq_cls_rm).eval()
    stored = {s.completion_key: s.value for s in pool.all("score")}
    for c in cands:
        msgs = [{"role": "system", "content": inst.system}, {"role": "user", "content": inst.turns[0]},
                {"role": "assistant", "content": c.texts[0]}, {"role": "user", "content": inst.turns[1]},
                {"role": "assistant", "content": c.texts[1]}]
        ids = tok.apply_chat_template(msgs, tokenize=True)
        ids = torch.tensor([list(ids["input_ids"] if hasattr(ids, "keys") else ids)])
        with torch.no_grad():
            truth = float(model(input_ids=ids).logits[0, 0])
        assert stored[c.key] == pytest.approx(truth, abs=1e-4)
    pool.close()
    best = RunStore(run_dir).all("completion", model="m1@bo2[seqcls-rm]")
    assert len(best) == 1 and best[0].texts == max(cands, key=lambda c: (stored[c.key], -c.sample_index)).texts


def test_pool_is_samples_only_never_the_greedy_answer(tmp_path, seq_cls_rm):
    """A model evaluated greedily: its run answer is not a candidate, and @bo1 is one sample."""
    from harness.config import load_config
    from harness.pipeline import run_all
    from harness.rerank import JANUS_SAMPLING, RerankError, rerank
    from harness.scorers import make_scorer
    from harness.store import RunStore

    run_dir, _ = _mt_run(tmp_path, ["Write a haiku."], generation={"temperature": 0.0, "max_tokens": 32})
    cfg = load_config(run_dir / "config.yaml")
    asyncio.run(run_all(cfg, run_dir, steps=("generate",)))
    greedy = RunStore(run_dir).all("completion", model="m1")
    assert len(greedy) == 1
    WriterBackend.seen = []
    asyncio.run(rerank(run_dir, make_scorer(str(seq_cls_rm)), [1], model="m1", analysis=False))
    assert [(r.temperature, r.top_p, r.max_tokens) for r in WriterBackend.seen] == \
        [(JANUS_SAMPLING["temperature"], JANUS_SAMPLING["top_p"], 32)]
    pick = RunStore(run_dir).all("completion", model="m1@bo1[seqcls-rm]")[0].metadata["rerank"]
    pool_keys = {c.key for c in RunStore(run_dir / "candidates").all("completion")}
    assert pick["selected_key"] in pool_keys and pick["selected_key"] != greedy[0].key
    with pytest.raises(RerankError, match="--temperature: 0.0 is greedy"):
        asyncio.run(rerank(run_dir, make_scorer(str(seq_cls_rm)), [2], model="m1", sampling={"temperature": 0.0}))


def test_pool_of_a_system_message_variant_is_sampled_as_that_variant(tmp_path, seq_cls_rm):
    from harness.rerank import rerank
    from harness.scorers import make_scorer

    run_dir, _ = _mt_run(tmp_path, ["Write a haiku."], generation={"max_tokens": 16}, system_variants=["none"])
    WriterBackend.seen = []
    res = asyncio.run(rerank(run_dir, make_scorer(str(seq_cls_rm)), [2], model="m1@sys=none", analysis=False))
    assert res.virtual_models == {"m1@sys=none@bo2[seqcls-rm]": 1}
    # the variant's setting (no system message) and its base's generation settings reach the pool
    assert len(WriterBackend.seen) == 2
    assert all(r.max_tokens == 16 and [m["role"] for m in r.messages] == ["user"] for r in WriterBackend.seen)


def test_reward_model_by_hub_id_from_the_cache_and_a_clear_error_offline(tmp_path, seq_cls_rm, monkeypatch):
    import shutil

    from huggingface_hub import constants

    from harness.rerank import RerankError, rerank_scorer
    from harness.scorers import make_scorer

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--test-org--tiny-rm"
    shutil.copytree(seq_cls_rm, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    scorer = make_scorer("test-org/tiny-rm")
    local = make_scorer(str(seq_cls_rm))
    assert scorer.name == "tiny-rm" and scorer.version == local.version
    with pytest.raises(RerankError, match="--reward-model: reward model 'test-org/absent-rm': not in the "
                                          "Hugging Face cache and could not be downloaded"):
        rerank_scorer("test-org/absent-rm")
    with pytest.raises(RerankError, match="is not a model directory or a hub id"):
        rerank_scorer(str(tmp_path / "nope"))


def test_curve_is_what_the_bo_models_mean(bench_run, seq_cls_rm):
    """The curve's n=1 point is the mean reward over the pool's samples (what one sample, @bo1, draws) and
    its n=N point is the best of the pool (what @boN picks)."""
    from harness.rerank import rerank
    from harness.scorers import make_scorer
    from harness.store import RunStore

    _, run_dir = bench_run
    res = asyncio.run(rerank(run_dir, make_scorer(str(seq_cls_rm)), [1, 4], model="m1"))
    curve = {row["n"]: row for row in res.analysis["curve"]}
    rewards = {s.completion_key: s.value for s in RunStore(run_dir / "candidates").all("score")}
    cands = RunStore(run_dir / "candidates").all("completion")
    per_prompt = {}
    for c in cands:
        per_prompt.setdefault(c.instance_id, []).append(rewards[c.key])
    assert curve[1]["reward_mean"] == pytest.approx(sum(sum(v) / len(v) for v in per_prompt.values()) / 3)
    bo4 = RunStore(run_dir).all("completion", model="m1@bo4[seqcls-rm]")
    assert curve[4]["reward_mean"] == pytest.approx(sum(c.metadata["rerank"]["reward"] for c in bo4) / 3)


def test_selection_ties_keep_the_lower_sample_index():
    from harness.records import Completion
    from harness.rerank import select_best

    comps = {s: Completion(task="t", instance_id="i", model="m", texts=[f"c{s}"], sample_index=s) for s in range(4)}
    rewards = {comps[0].key: 0.5, comps[1].key: 0.9, comps[2].key: 0.9, comps[3].key: None}
    assert select_best(comps, rewards, 1)[0].sample_index == 0
    best, reward, first_n = select_best(comps, rewards, 3)
    assert best.sample_index == 1 and reward == 0.9 and set(first_n) == {0, 1, 2}
    # sample 3 has no reward: there is no best of 4 (a best of 3 would be passed off as one)
    assert select_best(comps, rewards, 4) is None
    assert select_best(comps, {}, 4) is None


def test_an_instance_without_n_scored_samples_gets_no_best_of_n(tmp_path, seq_cls_rm, capsys):
    from harness.cli import main
    from harness.store import RunStore

    rows = [{"instance_id": f"q{i}", "prompt": f"question {i}", "candidates": [f"answer {i}.{k}" for k in range(4)]}
            for i in range(3)]
    rows[2]["candidates"] = rows[2]["candidates"][:2]  # only two candidates for q2
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["rerank", "--candidates", str(pool), "--reward-model", str(seq_cls_rm), "--n", "1,2,4",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "pool@bo4[seqcls-rm]: 2 completions (1 instance without 4 scored samples left out)" in out
    store = RunStore(tmp_path / "run")
    assert {c.instance_id for c in store.all("completion", model="pool@bo4[seqcls-rm]")} == {"q0", "q1"}
    assert len(store.all("completion", model="pool@bo2[seqcls-rm]")) == 3


def test_janus_format_conversation_text(value_head_rm):
    """A value-head (JANUS-RM) model reads a conversation in the Mistral multi-turn form; one turn is the
    single-answer reward text exactly."""
    from harness.backends.reward_model import load_reward_model

    rm = load_reward_model(value_head_rm)
    tok = rm.tokenizer
    assert rm.format.name == "janus-mistral"
    eos = tok.eos_token
    text = f"[INST] Be brief.\nq one [/INST] a one{eos}[INST] q two [/INST] a two {eos}"
    assert rm.encode("Be brief.", ["q one", "q two"], ["a one", "a two"]) == list(tok(text)["input_ids"])
    assert rm.encode("Be brief.", ["q one"], ["a one"]) == rm.encode("Be brief.", "q one", "a one")
    with pytest.raises(ValueError, match="2 turns for 1 answers"):
        rm.encode(None, ["a", "b"], ["x"])


def test_rerank_samples_under_the_run_configs_call_settings(tmp_path, data_dir, seq_cls_rm, monkeypatch):
    """The pool is sampled through the run's call layer settings (concurrency, retries, cost limit), as the
    run's own steps are: an experiment's best-of-n stage is bound by the config's `calls:` too."""
    import harness.calls
    from harness.cli import main
    from harness.config import parse_config
    from harness.pipeline import run_all

    BACKENDS.register("rerank-writer", WriterBackend)
    cfg = parse_config({
        "name": "bon", "data_dir": str(data_dir),
        "models": [{"name": "m1", "backend": "rerank-writer", "model": "writer", "generation": {"max_tokens": 16}}],
        "tasks": [{"name": "multifaceted_bench", "options": {"path": str(EXAMPLE), "n_boot": 20}}],
        "calls": {"concurrency": 1, "max_retries": 7, "max_cost": 12.5},
    })
    run_dir = tmp_path / "run"
    asyncio.run(run_all(cfg, run_dir, steps=("build", "generate", "aggregate")))
    seen = []

    class Recording(harness.calls.CallLayer):
        def __init__(self, path, settings=None):
            super().__init__(path, settings)
            seen.append(self.settings)

    monkeypatch.setattr(harness.calls, "CallLayer", Recording)
    assert main(["rerank", "--candidates", str(run_dir), "--reward-model", str(seq_cls_rm), "--n", "1,2",
                 "--model", "m1", "--no-analysis"]) == 0
    assert seen and all((s.concurrency, s.max_retries, s.max_cost) == (1, 7, 12.5) for s in seen)
