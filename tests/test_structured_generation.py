"""JSON schemas on requests: constrained decoding in hf, response_format over HTTP, vLLM's params."""
from __future__ import annotations

import asyncio
import json
import sys
import types

import pytest

from harness.backends.base import Backend, GenRequest, GenResult
from harness.backends.structured import SchemaCompileError, schema_violation

pytest.importorskip("xgrammar")

SCHEMA = {"title": "verdict", "type": "object",
          "properties": {"label": {"enum": ["good", "bad"]}, "score": {"type": "integer", "minimum": 1, "maximum": 5},
                         "note": {"type": "string", "minLength": 1, "maxLength": 12}},
          "required": ["label", "score", "note"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "Rate the capital of France. Answer in JSON."}]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from harness.backends.hf import HFBackend

    return HFBackend(str(tiny_model_dir), batch_size=4)


def _requests(schema, n=4, max_tokens=64):
    return [GenRequest(messages=MESSAGES, max_tokens=max_tokens, temperature=1.0, sample_index=i, seed=1,
                       json_schema=schema) for i in range(n)]


def test_schema_left_out_of_cache_key_while_unset():
    plain = GenRequest(messages=MESSAGES, max_tokens=8)
    assert "json_schema" not in plain.content()
    # the key this request had before the field existed (computed with the previous GenRequest)
    assert plain.cache_key("m") == "b807b7a1a592d05b9fa5e3c7eaae42f8fbbff0a7"
    assert GenRequest(messages=MESSAGES, max_tokens=8, json_schema=SCHEMA).cache_key("m") != plain.cache_key("m")


def test_hf_constrained_outputs_match_the_schema(tiny):
    # a random tiny model: free text is never this JSON; under the grammar every sample is
    free = tiny.generate_sync(_requests(None))
    assert sum(schema_violation(r.text, SCHEMA) is None for r in free) == 0
    out = tiny.generate_sync(_requests(SCHEMA))
    assert [schema_violation(r.text, SCHEMA) for r in out] == [None] * 4
    assert all(r.finish_reason == "stop" for r in out)
    # samples differ by sample index (sampling still samples), and repeat exactly
    assert len({r.text for r in out}) > 1 and [r.text for r in tiny.generate_sync(_requests(SCHEMA))] == \
        [r.text for r in out]


def test_hf_mixed_batch_rows_keep_their_own_schema(tiny):
    other = {"type": "object", "properties": {"x": {"const": 7}}, "required": ["x"], "additionalProperties": False}
    reqs = _requests(SCHEMA, n=2) + _requests(other, n=2) + _requests(None, n=1)
    out = tiny.generate_sync(reqs)
    assert [schema_violation(r.text, SCHEMA) for r in out[:2]] == [None, None]
    assert [json.loads(r.text) for r in out[2:4]] == [{"x": 7}, {"x": 7}]
    assert schema_violation(out[4].text, SCHEMA) is not None  # the unconstrained row stays free


def test_uncompilable_and_invalid_schemas_fail_naming_the_schema(tiny):
    lookbehind = {"title": "lookbehind", "type": "string", "pattern": "(?<=a)b"}
    with pytest.raises(SchemaCompileError, match="'lookbehind'.*cannot be compiled"):
        tiny.check_json_schema(lookbehind)
    with pytest.raises(SchemaCompileError, match="not a valid JSON Schema"):
        tiny.check_json_schema({"title": "typo", "type": "strng"})
    # in a batch: the error comes before any row is generated
    with pytest.raises(SchemaCompileError, match="lookbehind"):
        tiny.generate_sync(_requests(None, n=1) + _requests(lookbehind, n=1))


def _serve(backend):
    from harness.serve import ServerThread, build_app

    return ServerThread(build_app(backend, "tiny"))


@pytest.mark.parametrize("transport", ["light", "sdk"])
def test_openai_backend_sends_response_format_and_serve_honours_it(tiny, transport):
    from harness.backends.openai_backend import OpenAIBackend

    with _serve(tiny) as srv:
        client = OpenAIBackend("tiny", base_url=srv.base_url, transport=transport)
        async def both():
            try:
                return (await client.generate([GenRequest(messages=MESSAGES, max_tokens=64, temperature=0.0,
                                                          json_schema=SCHEMA)]),
                        await client.generate([GenRequest(prompt="Rate Paris:", max_tokens=64, temperature=0.0,
                                                          json_schema=SCHEMA)]))
            finally:
                client.close()  # light connections belong to this loop

        chat, comp = asyncio.run(both())
    assert schema_violation(chat[0].text, SCHEMA) is None and schema_violation(comp[0].text, SCHEMA) is None


def test_openai_request_body_carries_json_schema():
    from harness.backends.openai_backend import OpenAIBackend

    b = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    kw, extra = b._common(GenRequest(messages=MESSAGES, json_schema=SCHEMA), 1)
    assert kw["response_format"] == {"type": "json_schema",
                                     "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}
    assert "guided_json" not in kw and "guided_json" not in extra
    kw, extra = b._common(GenRequest(prompt="p", json_schema=SCHEMA), 1)  # completions: the SDK lacks the kwarg
    assert extra["response_format"]["json_schema"]["schema"] == SCHEMA and "response_format" not in kw
    kw, extra = b._common(GenRequest(messages=MESSAGES), 1)
    assert "response_format" not in kw and "response_format" not in extra


def test_serve_refuses_bad_response_format(tiny):
    import httpx

    with _serve(tiny) as srv:
        def post(path, body):
            return httpx.post(srv.base_url + path, json={"model": "tiny", "max_tokens": 8, **body}, timeout=60)

        bad = post("/chat/completions", {"messages": MESSAGES, "response_format": {"type": "xml"}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"
        lb = {"type": "json_schema", "json_schema": {"name": "lb", "schema": {"title": "lb", "type": "string",
                                                                              "pattern": "(?<=a)b"}}}
        for path, body in (("/chat/completions", {"messages": MESSAGES}), ("/completions", {"prompt": "x"})):
            r = post(path, {**body, "response_format": lb})
            assert r.status_code == 400 and "cannot be compiled" in r.json()["error"]["message"]
        obj = post("/chat/completions", {"messages": MESSAGES, "max_tokens": 48,
                                         "response_format": {"type": "json_object"}})
        assert obj.status_code == 200 and obj.json()["choices"][0]["message"]["content"].startswith("{")


def test_vllm_structured_params_follow_the_installed_api(monkeypatch):
    from harness.backends.vllm_backend import structured_params

    for name in ("StructuredOutputsParams", "GuidedDecodingParams"):
        mod = types.ModuleType("vllm.sampling_params")
        setattr(mod, name, lambda **kw: ("params", kw))
        pkg = types.ModuleType("vllm")
        pkg.sampling_params = mod
        monkeypatch.setitem(sys.modules, "vllm", pkg)
        monkeypatch.setitem(sys.modules, "vllm.sampling_params", mod)
        key = "structured_outputs" if name == "StructuredOutputsParams" else "guided_decoding"
        assert structured_params(SCHEMA) == {key: ("params", {"json": SCHEMA})}


class Refuses(Backend):
    name = "refuses"

    def __init__(self):
        super().__init__("r")
        self.generated = 0

    def check_json_schema(self, schema):
        raise SchemaCompileError(f"json_schema: schema '{schema['title']}' cannot be compiled: nope")

    async def generate(self, requests):
        self.generated += len(requests)
        return [GenResult(text="x") for _ in requests]


def test_builder_checks_stage_schemas_before_generating(tmp_path, data_dir):
    from harness.calls import CallLayer, CallSettings
    from tasks.multifaceted.sources import build_pool, sample_instructions
    from tasks.multifaceted.synth import BenchBuilder, StageStore

    inst = sample_instructions(build_pool(data_dir, ["koala"]), {"koala": 1})
    backend = Refuses()
    store, calls = StageStore(tmp_path / "run"), CallLayer(tmp_path / "c.sqlite", CallSettings())
    try:
        with pytest.raises(SchemaCompileError, match="'preference_set'"):
            asyncio.run(BenchBuilder(store, calls, backend).run(inst))
        assert backend.generated == 0
    finally:
        calls.close()
        store.close()
