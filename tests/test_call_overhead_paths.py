"""The fast paths of the call layer: the light HTTP transport answers exactly as the openai SDK
path does (results and cache entries), handles what a local server may send (chunked bodies,
``Connection: close``, dropped keep-alive connections, errors), and grouped commits keep the
crash guarantee: a SIGKILL loses at most the calls in flight."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from harness.backends.base import GenRequest
from harness.backends.openai_backend import OpenAIBackend
from harness.calls import CallLayer, CallSettings
from harness.fake import ScriptedBackend
from harness.records import Judgment
from harness.serve import Faults, ServerThread, build_app
from harness.store import RunStore, StoreError, grouped_writes

REPO = Path(__file__).resolve().parents[1]


def chat(text: str, **kw) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": text}], max_tokens=16, **kw)


REQUESTS = [chat(f"question {i}") for i in range(6)] + [
    chat("sampled", sample_index=s, temperature=1.0, logprobs=True, top_logprobs=3) for s in range(3)] + [
    chat("stop and seed", stop=["\n"], seed=7, repetition_penalty=1.1),
    GenRequest(messages=[{"role": "user", "content": "score"}, {"role": "assistant", "content": "Rating: [["}],
               max_tokens=1, logprobs=True, top_logprobs=5, continue_final_message=True),
    GenRequest(prompt="The sea", max_tokens=4, logprobs=True, top_logprobs=2),
    GenRequest(prompt="plain completion", max_tokens=4)]


def cache_rows(path: Path) -> dict[str, dict]:
    db = sqlite3.connect(path)
    try:
        rows = {k: json.loads(d) for k, d in db.execute("SELECT key, data FROM cache")}
    finally:
        db.close()
    for d in rows.values():
        d.pop("latency_s")  # a measurement, not an answer
    return rows


def test_light_transport_is_the_default_for_plain_http_only(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert OpenAIBackend("m", base_url="http://127.0.0.1:8000/v1").transport == "light"
    assert OpenAIBackend("m", base_url="http://gpu-node:8000/v1").transport == "light"
    assert OpenAIBackend("m", base_url="https://api.example.com/v1").transport == "sdk"
    assert OpenAIBackend("m", base_url="http://127.0.0.1:8000/v1", transport="sdk").transport == "sdk"
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    assert OpenAIBackend("m", base_url="http://gpu-node:8000/v1").transport == "sdk"  # the SDK honours proxies
    assert OpenAIBackend("m", base_url="http://localhost:8000/v1").transport == "light"
    with pytest.raises(ValueError, match="transport"):
        OpenAIBackend("m", base_url="https://api.example.com/v1", transport="light")
    with pytest.raises(ValueError, match="transport"):
        OpenAIBackend("m", base_url="http://x/v1", transport="fast")


def test_light_and_sdk_transports_give_the_same_results_and_cache_entries(tmp_path):
    app = build_app(ScriptedBackend(), "judge")
    out = {}
    with ServerThread(app) as srv:
        for transport in ("sdk", "light"):
            backend = OpenAIBackend("judge", base_url=srv.base_url, transport=transport)
            layer = CallLayer(tmp_path / f"{transport}.sqlite")
            res = asyncio.run(layer.run(backend, REQUESTS))
            assert all(r.error is None for r in res), [r.error for r in res]
            out[transport] = ([{**r.to_dict(), "latency_s": 0} for r in res], layer.stats.to_dict())
            layer.close()
    assert out["light"] == out["sdk"]
    assert out["light"][1]["sent"] == len(REQUESTS) - 2  # the three samples went as one n=3 call
    assert cache_rows(tmp_path / "light.sqlite") == cache_rows(tmp_path / "sdk.sqlite")


def test_light_transport_maps_errors_like_the_sdk_path(tmp_path):
    faults = Faults(rate_429=0.15, rate_500=0.15, rate_timeout=0.05, rate_malformed=0.15, timeout_sleep_s=1.5,
                    always_fail_marker="ALWAYS-FAIL", seed=3)
    app = build_app(ScriptedBackend(), "judge", faults)
    with ServerThread(app) as srv:
        backend = OpenAIBackend("judge", base_url=srv.base_url, timeout_s=0.5)
        assert backend.transport == "light"
        layer = CallLayer(tmp_path / "c.sqlite", CallSettings(max_retries=8, timeout_s=0.5, backoff_base_s=0.01))
        reqs = [chat(f"question {i}") for i in range(30)] + [chat("ALWAYS-FAIL please")]
        results = asyncio.run(layer.run(backend, reqs))
    assert all(r.error is None for r in results[:-1])
    assert "HTTP 500" in results[-1].error
    assert layer.stats.retries >= 5 and layer.stats.failed == 1


# ---------------------------------------------------------------- a hand-written HTTP server
class RawServer:
    """Answers each request with the next canned response bytes (then closes if told to)."""

    def __init__(self, responses: list[tuple[bytes, bool]]):
        self.responses = list(responses)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.requests: list[bytes] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self):
        while self.responses:
            conn, _ = self.sock.accept()
            self.connections += 1
            with conn:
                buf = b""
                while self.responses:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buf += data
                    if b"\r\n\r\n" not in buf:
                        break
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(rest) < n:
                        rest += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + rest[:n])
                    buf = rest[n:]
                    body, close = self.responses.pop(0)
                    for i in range(0, len(body), 7):  # in small pieces, as a network may deliver it
                        conn.sendall(body[i:i + 7])
                    if close:
                        break


def answer(text: str, chunked: bool = False, close: bool = False, status: str = "200 OK") -> bytes:
    body = json.dumps({"choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
    if close:
        head += "connection: close\r\n"
    if chunked:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 10]), body[i:i + 10]) for i in range(0, len(body), 10))
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


def run_one(url: str, reqs: list[GenRequest], **settings):
    backend = OpenAIBackend("judge", base_url=url, transport="light")

    async def go():
        out = []
        for r in reqs:  # one after another: each reuses the previous connection if it is open
            out.append((await CallLayer(":memory:", CallSettings(backoff_base_s=0, **settings)).run(backend, [r]))[0])
        backend.close()
        return out

    return asyncio.run(go())


def test_light_transport_reads_chunked_and_close_delimited_answers_and_reuses_connections():
    srv = RawServer([(answer("one"), False), (answer("two", chunked=True), False), (answer("three", close=True), True),
                     (answer("four"), False)])
    res = run_one(srv.url, [chat("a"), chat("b"), chat("c"), chat("d")])
    assert [r.text for r in res] == ["one", "two", "three", "four"]
    assert [r.prompt_tokens for r in res] == [3] * 4
    assert srv.connections == 2  # kept alive until the server said close
    first = srv.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and b"authorization: bearer" in first.lower()
    assert json.loads(first.split(b"\r\n\r\n", 1)[1])["messages"] == [{"role": "user", "content": "a"}]


def test_light_transport_reconnects_when_the_server_dropped_an_idle_connection():
    # the server closes after each answer without saying so: the next request finds a dead connection
    srv = RawServer([(answer("one"), True), (answer("two"), True)])
    res = run_one(srv.url, [chat("a"), chat("b")], max_retries=0)
    assert [r.text for r in res] == ["one", "two"] and srv.connections == 2


def test_light_transport_errors_are_transient_or_permanent_as_on_the_sdk_path():
    refused = b'{"error": {"message": "bad key sk-secret-1234567890abcdef"}}'
    srv = RawServer([(b"HTTP/1.1 429 Too Many\r\nretry-after: 0\r\ncontent-length: 0\r\n\r\n", False),
                     (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{\"choices", False),
                     (b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n", False),
                     (answer("fine"), False),
                     (b"HTTP/1.1 401 No\r\ncontent-length: %d\r\n\r\n%s" % (len(refused), refused), False)])
    ok, refused_res = run_one(srv.url, [chat("a"), chat("b")], max_retries=3)
    assert ok.text == "fine" and ok.error is None
    assert refused_res.error.startswith("APIStatusError: Error code: 401") and "bad key" in refused_res.error
    with socket.socket() as s:  # nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = run_one(f"http://127.0.0.1:{port}/v1", [chat("a")], max_retries=1)[0]
    assert down.error is not None and "APIConnectionError" in down.error


# ---------------------------------------------------------------- grouped writes
def judgment(i: int) -> Judgment:
    return Judgment("t", str(i), "m", "j", "jm", "h", "turn1", completion_key=f"t/{i}/c",
                    prompt=[{"role": "user", "content": f"p{i}"}], value=i)


def test_grouped_writes_commit_together_at_the_end_of_the_block(tmp_path):
    store = RunStore(tmp_path)
    with grouped_writes():
        store.put(judgment(1))
        store.put(judgment(2))
        with grouped_writes():  # nested: joins the outer group
            store.put(judgment(3))
        assert store.count("judgment") == 0  # held: nothing is visible before the commit
    assert store.count("judgment") == 3
    got = store.get("judgment", judgment(2).key)
    assert got.value == 2 and store.judge_prompt(got) == [{"role": "user", "content": "p2"}]


def test_a_write_after_the_group_closed_is_not_held(tmp_path):
    store = RunStore(tmp_path)

    async def go():
        with grouped_writes():
            task = asyncio.get_running_loop().create_task(asyncio.sleep(0.01))  # inherits the group's context
            late = asyncio.get_running_loop().create_task(write_later(task))
        await late

    async def write_later(task):
        await task
        store.put(judgment(9))  # runs after the block ended: written at once, not into the closed group

    asyncio.run(go())
    assert store.count("judgment") == 1


def test_a_failed_group_commit_raises_and_writes_none_of_it(tmp_path):
    store = RunStore(tmp_path)
    store.put(judgment(0))
    store._db.execute("CREATE TRIGGER no_five BEFORE INSERT ON records WHEN NEW.data LIKE '%\"value\": 5%' "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(StoreError, match="disk full"):
        with grouped_writes():
            for i in range(3, 7):
                store.put(judgment(i))
    assert store.count("judgment") == 1


def test_callbacks_run_after_the_cache_commit_and_their_writes_are_grouped(tmp_path):
    store = RunStore(tmp_path / "run")
    layer = CallLayer(tmp_path / "cache.sqlite", CallSettings(concurrency=8))
    commits = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    seen = []

    class OneByOne(ScriptedBackend):
        max_batch = 1

    def on_result(i, res):
        seen.append(len(layer.cache))  # the result is in the cache when its callback runs
        store.put(judgment(i))

    asyncio.run(layer.run(OneByOne(), [chat(f"q{i}") for i in range(40)], on_result=on_result))
    assert store.count("judgment") == 40 and len(layer.cache) == 40
    assert all(n >= k + 1 for k, n in enumerate(sorted(seen)))
    assert len(commits) < 40  # grouped (the calls land together in few loop turns)
    # a resumed run whose answers are all cached (records lost with a kill): their writes share one commit
    store2 = RunStore(tmp_path / "run2")
    commits2 = []
    store2._db.set_trace_callback(lambda sql: commits2.append(sql) if sql == "COMMIT" else None)
    asyncio.run(layer.run(OneByOne(), [chat(f"q{i}") for i in range(40)],
                          on_result=lambda i, res: store2.put(judgment(i))))
    assert layer.stats.cached == 40 and store2.count("judgment") == 40 and len(commits2) == 1


KILLER = textwrap.dedent("""
    import asyncio, os, signal, sys
    from harness.backends.base import Backend, GenResult
    from harness.calls import CallLayer, CallSettings
    from harness.records import Judgment
    from harness.store import RunStore

    out, kill_at, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    started = 0

    class Instant(Backend):
        name, max_batch, local = "instant", 1, True

        async def generate(self, reqs):
            global started
            started += 1
            if started == kill_at:
                with open(out + "/started", "w") as f:
                    f.write(str(started))
                os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(0.001 * (started % 3))  # answers land in different loop turns
            return [GenResult(text="Rating: [[7]]") for _ in reqs]

    from harness.backends.base import GenRequest
    store = RunStore(out)
    layer = CallLayer(out + "/cache.sqlite", CallSettings(concurrency=conc))
    reqs = [GenRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(400)]

    def on_result(i, res):
        store.put(Judgment("t", str(i), "m", "j", "jm", "h", "turn1", completion_key=f"t/{i}", raw=res.text))

    asyncio.run(layer.run(Instant("m"), reqs, on_result=on_result))
""")


@pytest.mark.parametrize("kill_at", [1, 37, 150])
def test_sigkill_with_grouped_writes_loses_at_most_the_calls_in_flight(tmp_path, kill_at):
    conc = 16
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path), str(kill_at), str(conc)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    started = int((tmp_path / "started").read_text())
    cached = set(cache_keys(tmp_path / "cache.sqlite"))
    db = sqlite3.connect(tmp_path / "run.sqlite")
    stored = {r[0] for r in db.execute("SELECT key FROM records")}
    db.close()
    # every stored record's call is in the cache (records are written only after the cache commit)
    assert len(stored) <= len(cached)
    # calls started but not committed: in flight at the kill (at most `concurrency`, the killing one included)
    assert started - len(cached) <= conc
    assert started - len(stored) <= conc


def cache_keys(path: Path) -> list[str]:
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return [k for (k,) in db.execute("SELECT key FROM cache")]
    finally:
        db.close()
