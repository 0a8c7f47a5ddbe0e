"""`harness serve` as an lm-eval endpoint: /v1/completions with token-id prompts, several prompts,
and echo + logprobs (prompt log-probabilities), as lm-eval's local-completions model sends them.

Fast tests use the tiny random model; the slow test runs lm-eval's own CLI (hf, local-completions,
local-chat-completions) on SmolLM2 and asserts the API runs score exactly as the hf run.
"""
from __future__ import annotations

import asyncio
import glob
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.backends.base import GenRequest
from harness.backends.hf import HFBackend
from harness.fake import ScriptedBackend
from harness.serve import ServerThread, build_app, start_server_process, stop_server_process

ECHO = {"echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0, "seed": 1234}  # lm-eval's payload
TEXTS = ["The capital of France is Paris.", "2 + 2 = 4", "Write a short poem about the sea. Explain"]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = HFBackend(str(tiny_model_dir), batch_size=4)
    b.load()
    return b


@pytest.fixture(scope="module")
def server(backend):
    with ServerThread(build_app(backend, "tiny")) as srv:
        yield srv


def post(srv, body: dict) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/completions", json={"model": "tiny", **body}, timeout=60)


def forward_logprobs(model_dir, ids: list[int]):
    """Plain transformers, one unpadded sequence: log p(ids[j] | ids[:j]) for j >= 1 and the
    log-softmax row after the last token."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return [float(logp[j - 1, ids[j]]) for j in range(1, len(ids))], logp[-1]


def test_echo_logprobs_equal_score_tokens_and_a_forward_pass(server, backend, tiny_model_dir):
    ids = [backend.tokenizer(t).input_ids for t in TEXTS]
    assert len({len(x) for x in ids}) == 3  # different lengths: the scoring batch is padded
    r = post(server, {"prompt": ids, **ECHO})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    direct = backend.score_tokens(ids, [1] * len(ids), top_k=1)
    for x, c, rows in zip(ids, choices, direct):
        lp = c["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(x) + 1
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["tokens"][:len(x)] == [backend.tokenizer.decode([t]) for t in x]
        want, last = forward_logprobs(tiny_model_dir, x)
        got = lp["token_logprobs"][1:len(x)]
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5
        assert max(abs(a - row[0]) for a, row in zip(got, rows)) < 1e-5
        # lm-eval's is_greedy: the token's logprob equals the best of top_logprobs exactly when it is the argmax
        for tok_lp, top, (_, greedy, _) in zip(got, lp["top_logprobs"][1:], rows):
            assert (tok_lp == max(top.values())) == greedy
        # the one generated token is the greedy next token, with its logprob
        nxt = int(last.argmax())
        assert lp["tokens"][-1] == backend.tokenizer.decode([nxt])
        assert abs(lp["token_logprobs"][-1] - float(last[nxt])) < 1e-5
        assert c["text"] == backend.tokenizer.decode(x) + backend.tokenizer.decode([nxt], skip_special_tokens=True)
        assert lp["text_offset"][:2] == [0, len(lp["tokens"][0])]


def test_lm_eval_reads_the_loglikelihood_it_would_compute(server, backend):
    """lm-eval's own parser on the server's answer: sum and is_greedy of the continuation tokens."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    tok = backend.tokenizer
    pairs = [("The capital of France is", " Paris."), ("2 + 2 =", " 4"), ("Write a short", " poem about the sea.")]
    seqs = [tok(c).input_ids + tok(x).input_ids for c, x in pairs]
    ctxlens = [len(tok(c).input_ids) for c, _ in pairs]
    out = post(server, {"prompt": seqs, **ECHO}).json()
    got = LocalCompletionsAPI.parse_logprobs(out, tokens=seqs, ctxlens=ctxlens)
    rows = backend.score_tokens(seqs, ctxlens)
    want = [(sum(lp for lp, _, _ in r), all(g for _, g, _ in r)) for r in rows]
    for (ll, greedy), (wll, wgreedy) in zip(got, want):
        assert abs(ll - wll) < 1e-5 and greedy == wgreedy


def test_text_prompts_score_as_their_tokens(server, backend):
    by_text = post(server, {"prompt": TEXTS[:2], **ECHO, "logprobs": 3}).json()["choices"]
    by_ids = post(server, {"prompt": [backend.tokenizer(t).input_ids for t in TEXTS[:2]], **ECHO,
                           "logprobs": 3}).json()["choices"]
    for a, b in zip(by_text, by_ids):
        assert a["text"] == b["text"] and a["logprobs"]["tokens"] == b["logprobs"]["tokens"]
        # 3 most likely tokens (fewer where two ids decode to the same text, e.g. partial UTF-8 bytes)
        assert all(1 <= len(t) <= 3 for t in a["logprobs"]["top_logprobs"][1:])
        for x, y in zip(a["logprobs"]["token_logprobs"][1:], b["logprobs"]["token_logprobs"][1:]):
            assert abs(x - y) < 1e-5
    one = post(server, {"prompt": TEXTS[0], **ECHO}).json()["choices"]  # a single string
    assert len(one) == 1 and one[0]["logprobs"]["tokens"] == by_text[0]["logprobs"]["tokens"]


def test_max_tokens_zero_echoes_the_prompt_only(server, backend):
    ids = backend.tokenizer(TEXTS[0]).input_ids
    c = post(server, {"prompt": ids, **ECHO, "max_tokens": 0}).json()["choices"][0]  # a flat id list
    assert len(c["logprobs"]["tokens"]) == len(ids) and c["text"] == backend.tokenizer.decode(ids)
    full = post(server, {"prompt": [ids], **ECHO}).json()["choices"][0]
    assert c["logprobs"]["token_logprobs"] == full["logprobs"]["token_logprobs"][:-1]


def test_echo_with_longer_generation_appends_the_generated_tokens(server, backend):
    ids = [backend.tokenizer(t).input_ids for t in TEXTS[:2]]
    echoed = post(server, {"prompt": ids, **ECHO, "max_tokens": 4}).json()["choices"]
    plain = post(server, {"prompt": ids, "max_tokens": 4, "temperature": 0, "logprobs": 1}).json()["choices"]
    prompt_only = post(server, {"prompt": ids, **ECHO, "max_tokens": 0}).json()["choices"]
    for x, e, p, z in zip(ids, echoed, plain, prompt_only):
        assert e["text"] == backend.tokenizer.decode(x) + p["text"]
        assert e["logprobs"]["tokens"] == z["logprobs"]["tokens"] + p["logprobs"]["tokens"]
        assert e["logprobs"]["token_logprobs"][:len(x)] == z["logprobs"]["token_logprobs"]
        assert e["logprobs"]["token_logprobs"][len(x):] == p["logprobs"]["token_logprobs"]
        # offsets count from the start of the prompt, echoed or not
        assert p["logprobs"]["text_offset"] == e["logprobs"]["text_offset"][len(x):]
        assert p["logprobs"]["text_offset"][0] == len(backend.tokenizer.decode(x))


def test_several_prompts_are_answered_in_order(server, backend):
    ids = [backend.tokenizer(t).input_ids for t in TEXTS]
    body = {"max_tokens": 5, "temperature": 0}
    for prompts in (TEXTS, ids):
        both = post(server, {"prompt": prompts, **body}).json()
        alone = [post(server, {"prompt": [p], **body}).json()["choices"][0]["text"] for p in prompts]
        assert [c["index"] for c in both["choices"]] == [0, 1, 2]
        assert [c["text"] for c in both["choices"]] == alone
        assert both["usage"]["prompt_tokens"] == sum(len(x) for x in ids)
    direct = asyncio.run(backend.generate([GenRequest(prompt_tokens=x, max_tokens=5) for x in ids]))
    assert [r.text for r in direct] == alone
    # n > 1: choice i * n + j is sample j of prompt i
    sampled = post(server, {"prompt": TEXTS[:2], "n": 2, **body}).json()["choices"]
    assert [c["index"] for c in sampled] == [0, 1, 2, 3]
    assert [c["text"] for c in sampled] == [alone[0], alone[0], alone[1], alone[1]]


def test_scoring_has_its_own_lane_and_concurrent_requests_share_a_pass(tiny_model_dir):
    """lm-eval's 1-token echo requests are answered by the scoring pass alone (no generate() call);
    concurrent ones are batched into one score_tokens call and answer as they would alone."""
    from concurrent.futures import ThreadPoolExecutor

    b = HFBackend(str(tiny_model_dir), batch_size=8)
    calls = {"score": [], "generate": 0}
    score, generate = b.score_tokens, b.generate

    def counting_score(seqs, starts, top_k=0):
        calls["score"].append(len(seqs))
        if calls.get("slow"):  # the others queue up meanwhile
            time.sleep(0.5)
            calls["slow"] = False
        return score(seqs, starts, top_k)

    async def counting_generate(reqs):
        calls["generate"] += 1
        return await generate(reqs)

    b.score_tokens, b.generate = counting_score, counting_generate
    ids = [b.tokenizer(t).input_ids for t in TEXTS] * 2
    with ServerThread(build_app(b, "tiny")) as srv:
        alone = [post(srv, {"prompt": [x], **ECHO}).json()["choices"][0]["logprobs"] for x in ids]
        assert calls == {"score": [1] * len(ids), "generate": 0}
        calls["score"].clear()
        calls["slow"] = True
        with ThreadPoolExecutor(len(ids)) as pool:
            together = list(pool.map(lambda x: post(srv, {"prompt": [x], **ECHO}).json(), ids))
    assert calls["generate"] == 0 and sum(calls["score"]) == len(ids) and max(calls["score"]) > 1
    for a, t in zip(alone, together):
        got = t["choices"][0]["logprobs"]
        assert got["tokens"] == a["tokens"]
        assert max(abs(x - y) for x, y in zip(got["token_logprobs"][1:], a["token_logprobs"][1:])) < 1e-5


@pytest.mark.parametrize("body, param", [
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [[1, -2]]}, "prompt"),
    ({"prompt": [[True, 2]]}, "prompt"),
    ({"prompt": [[1, 2.5]]}, "prompt"),
    ({"prompt": {"text": "a"}}, "prompt"),
    ({"prompt": [[1, 10 ** 6]]}, "prompt"),
    ({"prompt": "a", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "a", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "logprobs": 21}, "logprobs"),
    ({"prompt": "a", "logprobs": True}, "logprobs"),
    ({"prompt": "a", "echo": "yes"}, "echo"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "stop": [1]}, "stop"),
    ({"prompt": "a", "temperature": -1}, "temperature"),
    ({"prompt": "a", "top_p": 2}, "top_p"),
    ({"prompt": "a", "stream": True}, "stream"),
    ({"prompt": "a", "best_of": 3}, "best_of"),
    ({"prompt": "a", "logit_bias": {"5": 100}}, "logit_bias"),
])
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    r = post(server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_prompt_too_long_for_the_model_is_a_400(server, backend):
    limit = backend.config.max_position_embeddings
    r = post(server, {"prompt": [[5] * (limit - 2)], "max_tokens": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and str(limit) in r.text


def test_a_body_that_is_not_a_json_object_is_a_400(server):
    r = httpx.post(f"{server.base_url}/completions", content=b"{not json", timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = httpx.post(f"{server.base_url}/completions", json=[1, 2], timeout=10)
    assert r.status_code == 400


def test_a_backend_that_cannot_score_prompts_refuses_echo_logprobs():
    with ServerThread(build_app(ScriptedBackend(), "scripted")) as srv:
        r = post(srv, {"prompt": "rate this", **ECHO})
        assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
        assert "cannot score prompts" in r.json()["error"]["message"]
        r = post(srv, {"prompt": [[1, 2, 3]], "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        # what it can do still works: text, several prompts, echo without logprobs
        ok = post(srv, {"prompt": ["a", "b"], "max_tokens": 4, "echo": True}).json()["choices"]
        assert [c["index"] for c in ok] == [0, 1] and ok[0]["text"].startswith("a") and ok[1]["text"].startswith("b")


# --- slow: lm-eval's own CLI, hf against harness serve, on SmolLM2 ---------------------------------

MC_DOCS = [
    ("What is the capital of France?", ["Paris", "London", "Berlin", "Madrid"], 0),
    ("How many legs does a spider have?", ["six", "eight", "four", "ten"], 1),
    ("What color is the sky on a clear day?", ["green", "red", "blue", "black"], 2),
    ("Which animal says moo?", ["dog", "cat", "cow", "duck"], 2),
    ("What is 3 plus 4?", ["7", "6", "8", "12"], 0),
    ("Which planet do we live on?", ["Mars", "Venus", "Jupiter", "Earth"], 3),
    ("What do bees make?", ["milk", "honey", "silk", "wax paper"], 1),
    ("What is frozen water called?", ["steam", "ice", "sand", "glass"], 1),
]
GEN_DOCS = [
    ("What is the capital of France?", "Paris"),
    ("What is 2 plus 2?", "4"),
    ("What color is grass?", "Green"),
    ("What is the opposite of hot?", "Cold"),
    ("How many days are in a week?", "7"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean"),
]


def write_tasks(root: Path) -> Path:
    """local_mc (multiple choice) and local_gen (generate_until) over local JSONL, as in the reference notes."""
    tasks = root / "tasks"
    tasks.mkdir()
    mc, gen = root / "mc.jsonl", root / "gen.jsonl"
    mc.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in MC_DOCS))
    gen.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GEN_DOCS))
    common = "dataset_path: json\ntest_split: test\nmetadata: {version: 1.0}\n"
    (tasks / "local_mc.yaml").write_text(
        f"task: local_mc\n{common}dataset_kwargs: {{data_files: {{test: {mc}}}}}\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: answer\n"
        "metric_list: [{metric: acc}, {metric: acc_norm}]\n")
    (tasks / "local_gen.yaml").write_text(
        f"task: local_gen\n{common}dataset_kwargs: {{data_files: {{test: {gen}}}}}\n"
        "output_type: generate_until\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: \" {{answer}}\"\n"
        "generation_kwargs: {until: [\"\\n\"], max_gen_toks: 16, do_sample: false}\n"
        "metric_list: [{metric: exact_match, ignore_case: true, ignore_punctuation: true}]\n")
    return tasks


def lm_eval_cli(out: Path, tasks_dir: Path, tasks: str, model: str, model_args: str, *extra: str) -> dict:
    """Run ``lm_eval`` in a subprocess; returns {task: (metrics, samples)} and the wall time."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args,
           "--include_path", str(tasks_dir), "--tasks", tasks, "--output_path", str(out), "--log_samples",
           "--seed", "1234", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(out / "hf_datasets"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    [results] = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    metrics = json.loads(Path(results).read_text())["results"]
    got = {}
    for task in tasks.split(","):
        [samples] = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
        rows = sorted((json.loads(line) for line in Path(samples).read_text().splitlines()), key=lambda d: d["doc_id"])
        got[task] = (metrics[task], rows)
    print(f"lm_eval --model {model} {tasks} {' '.join(extra)}: {wall:.1f} s")
    return {"tasks": got, "wall_s": wall}


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    from harness.models import default_model_dir

    d = default_model_dir()
    if not (d / "config.json").exists():
        pytest.skip("embedded model not prepared (harness models prepare)")
    return d


@pytest.mark.slow
def test_lm_eval_against_harness_serve_scores_as_lm_eval_hf(tmp_path, smol_dir):
    tasks_dir = write_tasks(tmp_path)
    hf_args = f"pretrained={smol_dir},dtype=float32"
    hf = lm_eval_cli(tmp_path / "hf", tasks_dir, "local_mc,local_gen", "hf", hf_args,
                     "--batch_size", "1", "--device", "cpu")
    hf_chat = lm_eval_cli(tmp_path / "hf_chat", tasks_dir, "local_gen", "hf", hf_args,
                          "--batch_size", "1", "--device", "cpu", "--apply_chat_template")
    t0 = time.perf_counter()
    proc, base_url = start_server_process(str(smol_dir), "smol", batch_size=4, log_path=str(tmp_path / "serve.log"))
    print(f"harness serve up in {time.perf_counter() - t0:.1f} s")
    try:
        api = lm_eval_cli(tmp_path / "api", tasks_dir, "local_mc,local_gen", "local-completions",
                          f"model=smol,base_url={base_url}/completions,tokenizer_backend=huggingface,"
                          f"tokenizer={smol_dir},num_concurrent=1,max_retries=1", "--batch_size", "4")
        chat = lm_eval_cli(tmp_path / "chat", tasks_dir, "local_gen", "local-chat-completions",
                           f"model=smol,base_url={base_url}/chat/completions,num_concurrent=1,max_retries=1,"
                           "tokenized_requests=False,eos_string=<|im_end|>", "--apply_chat_template")
    finally:
        stop_server_process(proc)

    (hf_mc, hf_mc_rows), (api_mc, api_mc_rows) = hf["tasks"]["local_mc"], api["tasks"]["local_mc"]
    assert len(hf_mc_rows) == len(api_mc_rows) == len(MC_DOCS)
    assert api_mc["acc,none"] == hf_mc["acc,none"] and api_mc["acc_norm,none"] == hf_mc["acc_norm,none"]
    worst = 0.0
    for a, b in zip(hf_mc_rows, api_mc_rows):
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip((r[0] for r in a["resps"]), (r[0] for r in b["resps"])):
            worst = max(worst, abs(float(ll_a) - float(ll_b)))
            assert bool(greedy_a) == bool(greedy_b) and math.isfinite(float(ll_b))
    assert worst < 1e-4, worst
    print(f"local_mc: acc {api_mc['acc,none']:.3f} acc_norm {api_mc['acc_norm,none']:.3f}, "
          f"largest per-choice loglikelihood difference {worst:.2e}")
    for (want, want_rows), (got, got_rows) in ((hf["tasks"]["local_gen"], api["tasks"]["local_gen"]),
                                               (hf_chat["tasks"]["local_gen"], chat["tasks"]["local_gen"])):
        assert [r["resps"] for r in got_rows] == [r["resps"] for r in want_rows]
        assert got["exact_match,none"] == want["exact_match,none"]
    print("local_gen exact_match: completions", api["tasks"]["local_gen"][0]["exact_match,none"],
          "chat", chat["tasks"]["local_gen"][0]["exact_match,none"])
