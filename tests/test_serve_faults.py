"""`harness serve` fault injection: every documented fault kind, at rate 1 and at rate 0."""
from __future__ import annotations

import argparse
import json
import time

import httpx
import pytest

from harness.fake import ScriptedBackend
from harness.serve import FAULT_KINDS, Faults, ServerThread, add_args, build_app, faults_from_args

SECRET = "sk-test-0123456789abcdef"
CHAT = {"model": "judge", "messages": [{"role": "user", "content": "rate this"}], "max_tokens": 16}
COMPLETION = {"model": "judge", "prompt": "rate this", "max_tokens": 16}


def post(srv, path: str, body: dict, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/{path}", json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {SECRET}"})


@pytest.fixture
def serve():
    def make(**kw):
        app = build_app(ScriptedBackend(), "judge", Faults(**kw))
        return app, ServerThread(app)
    return make


def test_documented_kinds():
    assert set(FAULT_KINDS) == {"429", "500", "timeout", "truncated_json", "empty_choices", "null_content",
                                "echo_secret", "out_of_range"}


@pytest.mark.parametrize("path", ["chat/completions", "completions"])
@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "timeout"])
def test_each_kind_at_rate_one(serve, kind, path):
    app, srv = serve(rate=1.0, kinds=(kind,), retry_after_s=0.25)
    body = CHAT if path == "chat/completions" else COMPLETION
    with srv:
        for _ in range(3):
            r = post(srv, path, body)
            if kind == "429":
                assert r.status_code == 429 and float(r.headers["retry-after"]) == 0.25
            elif kind == "500":
                assert r.status_code == 500
            elif kind == "truncated_json":
                assert r.status_code == 200
                with pytest.raises(json.JSONDecodeError):
                    json.loads(r.text)
            elif kind == "empty_choices":
                assert r.status_code == 200 and r.json()["choices"] == []
            elif kind == "null_content":
                choice = r.json()["choices"][0]
                assert r.status_code == 200
                assert (choice["message"]["content"] if path == "chat/completions" else choice["text"]) is None
            elif kind == "echo_secret":
                assert r.status_code == 401 and SECRET in r.text
            elif kind == "out_of_range":
                choice = r.json()["choices"][0]
                text = choice["message"]["content"] if path == "chat/completions" else choice["text"]
                assert r.status_code == 200 and text == "Rating: [[42]]"
    assert app.state.counters["faults"] == 3 and app.state.counters["by_kind"] == {kind: 3}


def test_out_of_range_logprobs_are_out_of_range_too(serve):
    """A logprob judge (continue_final_message, top_logprobs) sees only the out-of-range token."""
    _, srv = serve(rate=1.0, kinds=("out_of_range",))
    body = {**CHAT, "logprobs": True, "top_logprobs": 5, "max_tokens": 1}
    with srv:
        r = post(srv, "chat/completions", body).json()
    tops = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert [t["token"] for t in tops] == ["42"]


def test_timeout_holds_the_answer_past_the_client_timeout(serve):
    app, srv = serve(rate=1.0, kinds=("timeout",), timeout_sleep_s=1.5)
    with srv:
        t0 = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            post(srv, "chat/completions", CHAT, timeout=0.3)
        assert time.perf_counter() - t0 < 1.4
        late = post(srv, "chat/completions", CHAT, timeout=10)  # a patient client gets a gateway timeout
        assert late.status_code == 504
    assert app.state.counters["by_kind"] == {"timeout": 2}


def test_rate_zero_injects_nothing(serve):
    app, srv = serve(rate=0.0, kinds=FAULT_KINDS)
    with srv:
        for i in range(30):
            r = post(srv, "chat/completions" if i % 2 else "completions", CHAT if i % 2 else COMPLETION)
            assert r.status_code == 200
            choice = r.json()["choices"][0]
            text = choice["message"]["content"] if i % 2 else choice["text"]
            assert text.startswith("The answer is adequate. Rating: [[")
            assert SECRET not in r.text
    assert app.state.counters == {"requests": 30, "faults": 0, "by_kind": {}}


def _statuses(seed: int, n: int = 40) -> list[int]:
    app = build_app(ScriptedBackend(), "judge", Faults(rate=0.5, kinds=("429", "500", "echo_secret"), seed=seed))
    with ServerThread(app) as srv:
        return [post(srv, "chat/completions", CHAT).status_code for _ in range(n)]


def test_seed_makes_faults_deterministic():
    a, b, c = _statuses(7), _statuses(7), _statuses(8)
    assert a == b and a != c
    assert set(a) == {200, 429, 500, 401}
    assert 8 <= sum(s != 200 for s in a) <= 32  # about half


def test_latency_is_added_to_every_request(serve):
    _, srv = serve(latency_s=0.3)
    with srv:
        t0 = time.perf_counter()
        assert post(srv, "chat/completions", CHAT).status_code == 200
        assert time.perf_counter() - t0 >= 0.3


def test_legacy_per_kind_rates_still_work(serve):
    app, srv = serve(rate_500=1.0)
    with srv:
        assert post(srv, "chat/completions", CHAT).status_code == 500
    app, srv = serve(rate_malformed=1.0)
    with srv:
        r = post(srv, "chat/completions", CHAT)
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)
    assert app.state.counters["by_kind"] == {"truncated_json": 1}


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_args(p)
    return p.parse_args(argv)


def test_cli_options_build_the_faults():
    f = faults_from_args(_parse(["--fault-rate", "0.25", "--fault-kinds", "429,timeout,echo_secret",
                                 "--latency", "0.1", "--fault-seed", "9"]))
    assert (f.rate, f.kinds, f.latency_s, f.seed) == (0.25, ("429", "timeout", "echo_secret"), 0.1, 9)
    default = faults_from_args(_parse([]))
    assert default.rate == 0 and default.latency_s == 0 and default.kinds == FAULT_KINDS
    assert default == Faults()  # no option: no fault injection
    # a Faults round-trips through the command line start_server_process builds
    assert faults_from_args(_parse(f.to_args())) == f


@pytest.mark.parametrize("argv", [["--fault-kinds", "429,bogus"], ["--fault-rate", "1.5"],
                                  ["--fault-rate", "-0.1"], ["--latency", "-1"]])
def test_cli_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit):
        faults_from_args(_parse(argv))


def test_help_documents_the_fault_options(capsys):
    p = argparse.ArgumentParser()
    add_args(p)
    text = p.format_help()
    for opt in ("--fault-rate", "--fault-kinds", "--latency", "--fault-seed"):
        assert opt in text
    for kind in FAULT_KINDS:
        assert kind in text


def test_served_tiny_model_applies_cli_faults(tiny_model_dir, tmp_path):
    """The options reach a real `harness serve` process over a model."""
    from harness.serve import start_server_process, stop_server_process

    proc, url = start_server_process(str(tiny_model_dir), "tiny", batch_size=2, timeout_s=180,
                                     log_path=str(tmp_path / "serve.log"),
                                     faults=Faults(rate=1.0, kinds=("echo_secret",), latency_s=0.2))
    try:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/chat/completions", json={**CHAT, "model": "tiny"}, timeout=30,
                       headers={"Authorization": f"Bearer {SECRET}"})
        assert r.status_code == 401 and SECRET in r.text
        assert time.perf_counter() - t0 >= 0.2
    finally:
        stop_server_process(proc)
