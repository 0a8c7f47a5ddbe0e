"""lm-eval tasks inside the harness: the bridge's numbers are lm-eval's own.

Fast tests use a tiny random model and local YAML tasks; the ``slow`` cross-check runs the
``lm_eval`` command itself on the embedded default model and compares document for document.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from harness.config import ConfigError, parse_config, validate  # noqa: E402
from harness.pipeline import run_all  # noqa: E402

QUESTIONS = [("What is the capital of France?", ["Paris", "London", "Berlin", "Madrid"], 0),
             ("What color is the sky on a clear day?", ["green", "blue", "red", "yellow"], 1),
             ("How many legs does a dog have?", ["two", "six", "four", "eight"], 2),
             ("Which animal says moo?", ["cat", "dog", "duck", "cow"], 3),
             ("What is 2 + 2?", ["four", "five", "three", "two"], 0),
             ("Which is a fruit?", ["carrot", "apple", "potato", "onion"], 1)]

MC_YAML = """task: local_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}},
              {{metric: acc_norm, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
"""
GEN_YAML = """task: local_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: " {{{{answer}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 12, do_sample: false}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
"""
PPL_YAML = """task: local_ppl
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{question}}}} {{{{answer}}}}"
metric_list: [{{metric: word_perplexity}}, {{metric: byte_perplexity}}, {{metric: bits_per_byte}}]
metadata: {{version: 1.0}}
"""


@pytest.fixture()
def yaml_tasks(tmp_path) -> Path:
    d = tmp_path / "lmeval_tasks"
    d.mkdir()
    mc, gen = tmp_path / "mc.jsonl", tmp_path / "gen.jsonl"
    mc.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    gen.write_text("".join(json.dumps({"question": q, "answer": c[a]}) + "\n" for q, c, a in QUESTIONS))
    (d / "local_mc.yaml").write_text(MC_YAML.format(data=mc))
    (d / "local_gen.yaml").write_text(GEN_YAML.format(data=gen))
    (d / "local_ppl.yaml").write_text(PPL_YAML.format(data=gen))
    return d


def _config(model_dir: Path, yaml_dir: Path, tasks: list[str], models: int = 1, **options) -> dict:
    opts = {"include_path": str(yaml_dir), **options}
    return {"name": "lme",
            "models": [{"name": f"m{i}", "backend": "hf", "model": str(model_dir)} for i in range(models)],
            "tasks": [{"name": f"lm_eval.{t}", "options": opts} for t in tasks]}


def _run(raw: dict, out: Path) -> dict:
    cfg = parse_config(raw)
    validate(cfg)
    return asyncio.run(run_all(cfg, out))


def _samples(out: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (out / "samples" / f"{task}.jsonl").read_text().splitlines()]


def _direct_hf(model_dir: Path, yaml_dir: Path, tasks: list[str], **kw) -> dict:
    """lm-eval's own hf model on the same tasks (what `lm_eval --model hf` runs)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=tasks,
                                   batch_size=1, device="cpu", task_manager=TaskManager(include_path=str(yaml_dir)),
                                   log_samples=True, **kw)


def test_bridge_equals_lm_eval_hf_on_tiny_model(tiny_model_dir, yaml_tasks, tmp_path):
    out = tmp_path / "run"
    res = _run(_config(tiny_model_dir, yaml_tasks, ["local_mc", "local_gen", "local_ppl"]), out)["results"]
    ref = _direct_hf(tiny_model_dir, yaml_tasks, ["local_mc", "local_gen", "local_ppl"])
    mc, gen, ppl = res["lm_eval.local_mc"]["m0"], res["lm_eval.local_gen"]["m0"], res["lm_eval.local_ppl"]["m0"]
    assert mc["acc"] == ref["results"]["local_mc"]["acc,none"]
    assert mc["acc_norm"] == ref["results"]["local_mc"]["acc_norm,none"]
    assert mc["acc_stderr"] == pytest.approx(ref["results"]["local_mc"]["acc_stderr,none"], abs=1e-12)
    assert gen["exact_match"] == ref["results"]["local_gen"]["exact_match,none"]
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ppl[metric] == pytest.approx(ref["results"]["local_ppl"][f"{metric},none"], rel=1e-5)
    # document for document: generated text identical, loglikelihoods to float noise
    ours = {int(r["instance_id"]): r for r in _samples(out, "lm_eval.local_gen")}
    for s in ref["samples"]["local_gen"]:
        assert ours[s["doc_id"]]["response"] == s["filtered_resps"]
    ours = {int(r["instance_id"]): r for r in _samples(out, "lm_eval.local_mc")}
    for s in ref["samples"]["local_mc"]:
        mine = [json.loads(x) for x in ours[s["doc_id"]]["response"]]
        for (ll, greedy), (ll_ref, greedy_ref) in zip(mine, s["filtered_resps"]):
            assert ll == pytest.approx(float(ll_ref), abs=1e-4)
            assert greedy == (str(greedy_ref) == "True" if isinstance(greedy_ref, str) else greedy_ref)
    assert mc["primary_metric"] == "acc" and mc["official_metrics"] == ["acc", "acc_norm"]


def test_rerun_answers_from_cache_and_keeps_numbers(tiny_model_dir, yaml_tasks, tmp_path):
    raw = _config(tiny_model_dir, yaml_tasks, ["local_mc"])
    first = _run(raw, tmp_path / "run")
    again = _run(raw, tmp_path / "run")
    assert again["results"] == first["results"]
    assert again["summary"]["generation"]["lm_eval.local_mc/m0"]["todo"] == 0  # every document stored
    # a killed run left no records, only cached calls: a new store over the same cache sends nothing
    (tmp_path / "run" / "run.sqlite").unlink()
    third = _run(raw, tmp_path / "run")
    assert third["results"]["lm_eval.local_mc"] == first["results"]["lm_eval.local_mc"]
    g = third["summary"]["generation"]["lm_eval.local_mc/m0"]
    assert g["todo"] == len(QUESTIONS) and g["requests"] == g["cached"] > 0


def test_changed_task_settings_recompute(tiny_model_dir, yaml_tasks, tmp_path):
    _run(_config(tiny_model_dir, yaml_tasks, ["local_mc"]), tmp_path / "run")
    res = _run(_config(tiny_model_dir, yaml_tasks, ["local_mc"], num_fewshot=1), tmp_path / "run")
    g = res["summary"]["generation"]["lm_eval.local_mc/m0"]
    assert g["todo"] == len(QUESTIONS) and g["requests"] > g["cached"]  # new prompts, new calls
    assert len(_samples(tmp_path / "run", "lm_eval.local_mc")) == len(QUESTIONS)  # old answers not mixed in


def test_per_document_metrics_pair_across_models(tiny_model_dir, yaml_tasks, tmp_path):
    from reports import significance

    out = tmp_path / "run"
    _run(_config(tiny_model_dir, yaml_tasks, ["local_mc"], models=2), out)
    rows = _samples(out, "lm_eval.local_mc")
    assert {(r["model"], r["instance_id"]) for r in rows} == {(m, str(i)) for m in ("m0", "m1")
                                                               for i in range(len(QUESTIONS))}
    assert all(r["score"] in (0.0, 1.0) for r in rows)
    table = significance.score_table(rows)
    assert table["m0"] == table["m1"]  # the same weights under two names: paired, identical


def test_system_messages_constant_and_per_document(tiny_model_dir, yaml_tasks, tmp_path):
    generic = "You are a careful assistant."
    out = tmp_path / "generic"
    _run(_config(tiny_model_dir, yaml_tasks, ["local_gen"], apply_chat_template=True, system=generic), out)
    prompts = [r for r in _completions(out)]
    assert prompts and all(generic in p for p in prompts)

    pool = tmp_path / "systems.jsonl"
    pool.write_text("".join(json.dumps({"system": f"Persona number {k}."}) + "\n" for k in range(4)))
    spec = {"file": str(pool), "field": "system", "seed": 3}
    out2 = tmp_path / "per_doc"
    _run(_config(tiny_model_dir, yaml_tasks, ["local_gen"], apply_chat_template=True, system=spec), out2)
    from tasks.lm_eval.task import draw_system_messages

    expected = draw_system_messages(pool, "system", 3, len(QUESTIONS), "x")
    got = _completions(out2, by_doc=True)
    assert [sum(f"Persona number {k}." in got[i] for k in range(4)) for i in range(len(QUESTIONS))] == \
        [1] * len(QUESTIONS)
    assert all(expected[i] in got[i] for i in range(len(QUESTIONS)))
    assert len(set(expected)) > 1


def _completions(out: Path, by_doc: bool = False):
    from harness.store import RunStore

    store = RunStore(out)
    try:
        comps = [c for c in store.iter("completion")]
    finally:
        store.close()
    if by_doc:
        return {int(c.instance_id): json.dumps(c.metadata["arguments"]) for c in comps}
    return [json.dumps(c.metadata["arguments"]) for c in comps]


def test_unknown_lm_eval_task_gets_did_you_mean(tiny_model_dir, yaml_tasks, tmp_path):
    with pytest.raises(ValueError, match=r"tasks\[lm_eval.local_mcc\].name: unknown lm-eval task 'local_mcc'"
                                         r".*Did you mean: local_mc"):
        _run(_config(tiny_model_dir, yaml_tasks, ["local_mcc"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_hub_dataset_without_local_copy_fails_before_any_call(tiny_model_dir, yaml_tasks, tmp_path):
    (yaml_tasks / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: no-such-org/no-such-dataset\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "metric_list: [{metric: exact_match}]\n")
    with pytest.raises(ValueError, match=r"no-such-org/no-such-dataset.*dataset_path: json"):
        _run(_config(tiny_model_dir, yaml_tasks, ["hub_task"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_options_name_the_field(tiny_model_dir, yaml_tasks, tmp_path):
    with pytest.raises(ValueError, match=r"tasks\[lm_eval.local_mc\].options: unknown option\(s\) \['fewshot'\]"):
        _run(_config(tiny_model_dir, yaml_tasks, ["local_mc"], fewshot=2), tmp_path / "a")
    raw = _config(tiny_model_dir, yaml_tasks, ["local_mc"])
    raw["models"][0]["generation"] = {"n_samples": 2}
    with pytest.raises(ValueError, match=r"models\[m0\].generation: \['n_samples'\] cannot be applied"):
        _run(raw, tmp_path / "b")


def test_unknown_name_family_is_checked_at_config_load():
    raw = {"name": "x", "models": [{"name": "m", "backend": "scripted", "model": "s"}],
           "tasks": [{"name": "lm_eval."}]}
    with pytest.raises(ConfigError, match="unknown task 'lm_eval.'"):
        validate(parse_config(raw))


@pytest.mark.slow
def test_cross_check_against_the_lm_eval_command(yaml_tasks, tmp_path):
    """The embedded default model: a local multiple-choice task, a generation task and IFEval
    on a slice, through the bridge and through `lm_eval` itself, document for document."""
    from harness.models import default_model_dir

    smol = default_model_dir()
    if not (smol / "config.json").exists():
        pytest.skip("embedded model not prepared (harness models prepare)")
    import lm_eval

    ifeval_yaml = Path(lm_eval.__file__).parent / "tasks" / "ifeval" / "ifeval.yaml"
    data = Path(os.environ.get("HARNESS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    (yaml_tasks / "ifeval_local.yaml").write_text(
        f"include: {ifeval_yaml}\ntask: ifeval_local\ndataset_path: json\ndataset_name: null\ntest_split: train\n"
        f"dataset_kwargs: {{data_files: {{train: {data / 'ifeval' / 'input_data.jsonl'}}}}}\n")
    cli_out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    base = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={smol},dtype=float32",
            "--include_path", str(yaml_tasks), "--batch_size", "1", "--device", "cpu", "--log_samples"]
    subprocess.run(base + ["--tasks", "local_mc,local_gen", "--output_path", str(cli_out / "a")],
                   check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(base + ["--tasks", "ifeval_local", "--limit", "3", "--apply_chat_template",
                           "--gen_kwargs", "max_gen_toks=48", "--output_path", str(cli_out / "b")],
                   check=True, env=env, capture_output=True, timeout=600)
    cli = {}
    for f in cli_out.rglob("results_*.json"):
        cli.update(json.loads(f.read_text())["results"])
    raw = {"name": "x", "data_dir": str(data),
           "models": [{"name": "smol", "backend": "hf", "model": str(smol)}],
           "tasks": [{"name": "lm_eval.local_mc", "options": {"include_path": str(yaml_tasks)}},
                     {"name": "lm_eval.local_gen", "options": {"include_path": str(yaml_tasks)}},
                     {"name": "ifeval", "limit": 3,
                      "options": {"apply_chat_template": True, "gen_kwargs": {"max_gen_toks": 48}}}]}
    res = _run(raw, tmp_path / "run")["results"]
    assert res["lm_eval.local_mc"]["smol"]["acc"] == cli["local_mc"]["acc,none"]
    assert res["lm_eval.local_mc"]["smol"]["acc_norm"] == cli["local_mc"]["acc_norm,none"]
    assert res["lm_eval.local_gen"]["smol"]["exact_match"] == cli["local_gen"]["exact_match,none"]
    for metric in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                   "inst_level_loose_acc"):
        assert res["ifeval"]["smol"][metric] == cli["ifeval_local"][f"{metric},none"], metric
    # the IFEval responses themselves, document for document
    cli_rows = {}
    for f in cli_out.rglob("samples_ifeval_local_*.jsonl"):
        cli_rows = {r["doc_id"]: r["filtered_resps"] for r in map(json.loads, f.read_text().splitlines())}
    ours = {int(r["instance_id"]): r["response"] for r in _samples(tmp_path / "run", "ifeval")}
    assert ours == cli_rows


def test_openai_compatible_server_gives_the_same_numbers(tiny_model_dir, yaml_tasks, tmp_path):
    """The bridge over HTTP (completions with echo logprobs, token-id prompts) to `harness serve`
    equals the bridge on the hf backend in process."""
    from harness.backends.hf import HFBackend
    from harness.serve import ServerThread, build_app

    direct = _run(_config(tiny_model_dir, yaml_tasks, ["local_mc", "local_gen"]), tmp_path / "direct")["results"]
    with ServerThread(build_app(HFBackend(str(tiny_model_dir), batch_size=4), "tiny")) as srv:
        raw = _config(tiny_model_dir, yaml_tasks, ["local_mc", "local_gen"])
        raw["models"] = [{"name": "m0", "backend": "openai", "model": "tiny", "base_url": srv.base_url,
                          "options": {"tokenizer": str(tiny_model_dir)}}]
        served = _run(raw, tmp_path / "served")["results"]
    for task in ("lm_eval.local_mc", "lm_eval.local_gen"):
        for k, v in direct[task]["m0"].items():
            if isinstance(v, float):
                assert served[task]["m0"][k] == pytest.approx(v, abs=1e-9), (task, k)


def test_server_without_echo_logprobs_is_refused_not_scored(tiny_model_dir, yaml_tasks, tmp_path):
    from harness.fake import ScriptedBackend
    from harness.serve import ServerThread, build_app

    with ServerThread(build_app(ScriptedBackend(), "scripted")) as srv:
        raw = _config(tiny_model_dir, yaml_tasks, ["local_mc"])
        raw["models"] = [{"name": "m0", "backend": "openai", "model": "scripted", "base_url": srv.base_url,
                          "options": {"tokenizer": str(tiny_model_dir)}}]
        raw["calls"] = {"max_retries": 0}
        with pytest.raises(Exception, match="requests failed.*(echo|logprob|score)"):
            _run(raw, tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()


def test_system_variants_reach_lm_eval_tasks(tiny_model_dir, yaml_tasks, tmp_path):
    raw = _config(tiny_model_dir, yaml_tasks, ["local_gen"], apply_chat_template=True)
    raw["generic_system"] = "You are a generic assistant."
    raw["models"][0]["system_variants"] = ["none", "generic"]
    out = tmp_path / "run"
    res = _run(raw, out)["results"]["lm_eval.local_gen"]
    assert set(res) == {"m0", "m0@sys=none", "m0@sys=generic"}
    from harness.store import RunStore

    store = RunStore(out)
    try:
        args = {}
        for c in store.iter("completion"):
            args.setdefault(c.model, []).append(json.dumps(c.metadata["arguments"]))
    finally:
        store.close()
    assert all("generic assistant" in a for a in args["m0@sys=generic"])
    assert not any("generic assistant" in a for a in args["m0"] + args["m0@sys=none"])
