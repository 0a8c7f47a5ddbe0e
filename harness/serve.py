"""A small OpenAI-compatible server over any harness backend (``harness serve``).

It gives tests and the demo a real HTTP judge endpoint on 127.0.0.1: chat and legacy
completions, ``n`` > 1, logprobs/top_logprobs, and vLLM's ``continue_final_message``
extension (used for logprob scoring). Concurrent requests are gathered into batches
for the backend. ``/v1/completions`` also takes token-id prompts, several prompts per
request and ``echo`` with ``logprobs`` (prompt log-probabilities), which is what
lm-eval's ``local-completions`` model needs (``harness/serve_completions.py``). ``response_format``
(``json_schema`` or ``json_object``) on either endpoint becomes the requests' JSON schema, honoured
by the backend (the hf backend decodes under it); a schema it cannot compile is an HTTP 400.

Fault injection, to test a client's reliability: with --fault-rate P each request fails
with probability P, the kind drawn uniformly from --fault-kinds (default: all):
  429             rate limited, with a Retry-After header
  500             server error
  timeout         the answer is held --fault-timeout-s seconds, then a 504
  truncated_json  a 200 whose body is cut-off JSON
  empty_choices   a 200 with "choices": []
  null_content    a 200 whose message content (completions: text) is null
  echo_secret     a 401 whose body echoes the request's Authorization bearer token
  out_of_range    a normal completion whose text is an out-of-range score, "Rating: [[42]]"
--latency adds a fixed delay to every request; --fault-seed makes the draws repeatable.
"""
import argparse
import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from harness import serve_completions as completions_api
from harness.backends.base import Backend, GenRequest, GenResult, TokenLogprob


FAULT_KINDS = ("429", "500", "timeout", "truncated_json", "empty_choices", "null_content", "echo_secret",
               "out_of_range")
_LEGACY_KINDS = (("rate_429", "429"), ("rate_500", "500"), ("rate_timeout", "timeout"),
                 ("rate_malformed", "truncated_json"))


def parse_fault_kinds(value) -> tuple[str, ...]:
    """``"429,timeout"`` (or a sequence) -> ``("429", "timeout")``; unknown kinds raise ValueError."""
    items = value.split(",") if isinstance(value, str) else list(value)
    kinds = tuple(str(k).strip() for k in items if str(k).strip())
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad:
        raise ValueError(f"unknown fault kind(s) {', '.join(bad)}; known: {','.join(FAULT_KINDS)}")
    return kinds


@dataclass
class Faults:
    """Fault injection: each request faults with probability ``rate``, its kind drawn uniformly from
    ``kinds``; one seeded RNG draw per request. ``rate_429`` ... ``rate_malformed`` add per-kind
    probabilities (``malformed`` is ``truncated_json``). ``latency_s`` delays every request."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    timeout_sleep_s: float = 5.0
    retry_after_s: float = 0.05
    latency_s: float = 0.0
    always_fail_marker: str | None = None  # a prompt containing this always gets a 500
    out_of_range_text: str = "Rating: [[42]]"
    seed: int = 0

    def __post_init__(self):
        self.kinds = parse_fault_kinds(self.kinds)
        rates = [self.rate] + [getattr(self, a) for a, _ in _LEGACY_KINDS]
        if any(not 0.0 <= float(r) <= 1.0 for r in rates):
            raise ValueError(f"fault rates must be in [0, 1], got {rates}")
        if self.rate and not self.kinds:
            raise ValueError("a fault rate needs at least one fault kind")
        if self.latency_s < 0 or self.timeout_sleep_s < 0:
            raise ValueError("latency and timeout must be >= 0")

    def table(self) -> list[tuple[float, str]]:
        """(probability, kind) in draw order; the probabilities add up to at most 1 in effect."""
        out = [(self.rate / len(self.kinds), k) for k in self.kinds] if self.rate else []
        return out + [(getattr(self, a), k) for a, k in _LEGACY_KINDS if getattr(self, a)]

    def to_args(self) -> list[str]:
        """The ``harness serve`` options for these faults (rate, kinds, latency, timeout, seed)."""
        if any(getattr(self, a) for a, _ in _LEGACY_KINDS) or self.always_fail_marker:
            raise ValueError("per-kind rates and always_fail_marker have no command-line options")
        return ["--fault-rate", repr(float(self.rate)), "--fault-kinds", ",".join(self.kinds),
                "--latency", repr(float(self.latency_s)), "--fault-timeout-s", repr(float(self.timeout_sleep_s)),
                "--fault-seed", str(int(self.seed))]


class Batcher:
    """Collects concurrent requests into backend batches of at most ``max_batch``.

    ``run`` answers one batch (default: ``backend.generate``); ``workers`` batches may run at once
    (each in a thread of its own: torch releases the GIL, so a second core helps). Batchers sharing
    ``lock`` (a semaphore of the server's worker count) call the model at most that many times at
    once (the generation and the prompt-scoring lanes)."""

    def __init__(self, backend: Backend, wait_s: float = 0.005, run=None,
                 lock: asyncio.Semaphore | None = None, workers: int = 1):
        self.backend = backend
        self.wait_s = wait_s
        self.run = run or backend.generate
        self.lock = lock
        self.workers = workers
        self.queue: asyncio.Queue | None = None
        self._tasks: list = []

    async def submit(self, reqs: list) -> list:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.workers)]
        futs = []
        for r in reqs:
            fut = asyncio.get_running_loop().create_future()
            await self.queue.put((r, fut))
            futs.append(fut)
        return list(await asyncio.gather(*futs))

    async def _loop(self) -> None:
        size = max(1, getattr(self.backend, "max_batch", 1))
        while True:
            items = [await self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(items) < size:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            try:
                async with self.lock or contextlib.nullcontext():
                    results = await self.run([r for r, _ in items])
                for (_, fut), res in zip(items, results):
                    fut.set_result(res)
            except Exception as e:  # surface to every waiting request
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)


def _chat_logprobs(res: GenResult) -> dict | None:
    if res.logprobs is None:
        return None
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
                         "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())} for a, b in t.top]}
                        for t in res.logprobs]}


def build_app(backend: Backend, served_name: str, faults: Faults | None = None, workers: int = 1):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI(title="harness serve")
    model_lock = asyncio.Semaphore(workers)
    batcher = Batcher(backend, lock=model_lock, workers=workers)
    # prompt scoring (echo + logprobs) is its own lane: a forward pass, never part of a generate() batch
    scorer = (Batcher(backend, run=completions_api.make_score(backend), lock=model_lock)
              if completions_api.can_score(backend) else None)
    completer = completions_api.Completer(backend, batcher.submit, scorer.submit if scorer else None)
    faults = faults or Faults()
    rng = random.Random(faults.seed)
    counters = {"requests": 0, "faults": 0, "by_kind": {}}
    app.state.counters = counters

    table = faults.table()

    def error(status: int, message: str, **kw) -> JSONResponse:
        return JSONResponse({"error": {"message": message, **kw}}, status_code=status)

    async def draw_fault(request: Request, body: dict):
        """Sleep the fixed latency, then pick this request's fault: a response to send instead of the
        answer, a kind that alters the answer (str), or None."""
        counters["requests"] += 1
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        text = str(body.get("messages") or body.get("prompt") or "")
        if faults.always_fail_marker and faults.always_fail_marker in text:
            counters["faults"] += 1
            return error(500, "injected permanent failure")
        if not table:
            return None
        x = rng.random()
        acc, kind = 0.0, None
        for p, k in table:
            acc += p
            if x < acc:
                kind = k
                break
        if kind is None:
            return None
        counters["faults"] += 1
        counters["by_kind"][kind] = counters["by_kind"].get(kind, 0) + 1
        if kind == "429":
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429,
                                headers={"retry-after": str(faults.retry_after_s)})
        if kind == "500":
            return error(500, "injected server error")
        if kind == "timeout":
            await asyncio.sleep(faults.timeout_sleep_s)
            return error(504, "late")
        if kind == "truncated_json":
            return PlainTextResponse('{"id": "x", "choices": [ {"trunc', media_type="application/json")
        if kind == "echo_secret":  # a server that puts the key it was sent into its error message
            auth = request.headers.get("authorization", "")
            key = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
            return error(401, f"Incorrect API key provided: {key}", type="invalid_request_error",
                         code="invalid_api_key")
        return kind  # empty_choices, null_content, out_of_range: a 200 with an altered answer

    def out_of_range_results(reqs: list[GenRequest]) -> list[GenResult]:
        text = faults.out_of_range_text
        digits = "".join(ch for ch in text if ch.isdigit()) or text
        out = []
        for r in reqs:
            lps = None
            if r.logprobs or r.top_logprobs:
                lps = [TokenLogprob(digits, 0.0, [(digits, 0.0)])]
            out.append(GenResult(text=text, finish_reason="stop", prompt_tokens=len(str(r.messages or r.prompt)) // 4,
                                 completion_tokens=max(1, len(text) // 4), logprobs=lps))
        return out

    async def out_of_range_generate(reqs: list[GenRequest]) -> list[GenResult]:
        return out_of_range_results(reqs)

    async def answer(request: Request, chat: bool):
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the request body is not JSON", type="invalid_request_error")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object", type="invalid_request_error")
        fault = await draw_fault(request, body)
        if fault is not None and not isinstance(fault, str):
            return fault
        if chat:
            try:
                reqs = requests_from(body)
            except completions_api.BadRequest as e:
                return error(400, str(e), type="invalid_request_error", param=e.param)
            results = out_of_range_results(reqs) if fault == "out_of_range" else await batcher.submit(reqs)
            payload = chat_payload(results)
        else:
            try:
                plan = completions_api.parse(body)
                choices, use = await completer.answer(
                    plan, generate=out_of_range_generate if fault == "out_of_range" else None)
            except completions_api.BadRequest as e:
                return error(400, str(e), type="invalid_request_error", param=e.param)
            payload = completions_api.payload(choices, use, served_name)
        if fault == "empty_choices":
            payload["choices"] = []
        elif fault == "null_content":
            for c in payload["choices"]:
                if chat:
                    c["message"]["content"] = None
                else:
                    c["text"] = None
        return payload

    def requests_from(body: dict) -> list[GenRequest]:
        """A chat body's requests (completions: ``serve_completions.parse``)."""
        n = int(body.get("n") or 1)
        top = body.get("top_logprobs")
        want_lp = bool(body.get("logprobs"))
        base = dict(max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
                    temperature=float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0),
                    top_p=float(body.get("top_p") or 1.0), repetition_penalty=body.get("repetition_penalty"),
                    stop=[body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop"),
                    logprobs=want_lp, top_logprobs=int(top or 0), seed=body.get("seed"))
        base.update(messages=body["messages"], continue_final_message=bool(body.get("continue_final_message")))
        schema = completions_api.response_format_schema(body)
        if schema is not None:
            completions_api.check_schema(backend, schema)
            base["json_schema"] = schema
        return [GenRequest(sample_index=i, **base) for i in range(n)]

    def usage(results: list[GenResult]) -> dict:
        p = results[0].prompt_tokens
        c = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "harness"}]}

    def chat_payload(results: list[GenResult]) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": served_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                             "finish_reason": r.finish_reason or "stop", "logprobs": _chat_logprobs(r)}
                            for i, r in enumerate(results)],
                "usage": usage(results)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await answer(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, chat=False)

    return app


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, benchmarks)."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                     access_log=False, loop="asyncio")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server_process(model: str, served_name: str, port: int | None = None, batch_size: int = 8,
                         chat_template: str = "tokenizer", timeout_s: float = 300,
                         log_path: str | None = None, faults: Faults | None = None,
                         workers: int = 1) -> tuple[subprocess.Popen, str]:
    """Start ``harness serve`` as a child process and wait until it answers.

    The child dies with this process, even on SIGKILL: it runs in its own process group, is told our pid
    (``--parent-pid``: it asks Linux for PR_SET_PDEATHSIG and watches its parent pid), and is stopped at
    interpreter exit. Stop it with :func:`stop_server_process`.
    """
    import httpx

    from harness import lifecycle

    port = port or free_port()
    cmd = [sys.executable, "-m", "harness.serve", "--model", model, "--name", served_name, "--port", str(port),
           "--batch-size", str(batch_size), "--workers", str(workers), "--chat-template", chat_template,
           "--parent-pid", str(os.getpid())]
    if not lifecycle.pdeathsig_usable():  # started from a thread: PDEATHSIG would fire when the thread ends
        cmd.append("--no-pdeathsig")
    if faults is not None:
        cmd += faults.to_args()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = lifecycle.popen_tied(cmd, stdout=log, stderr=log, env=env)
    finally:
        if log_path:
            log.close()  # the child holds its own copy
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"judge server exited with code {proc.returncode}" +
                                   (f"; see {log_path}" if log_path else ""))
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return proc, f"{url}/v1"
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"judge server did not answer on {url} within {timeout_s}s")
    except BaseException:  # a timeout, a failed start, or SIGTERM/Ctrl-C while waiting
        stop_server_process(proc, timeout_s=5)
        raise


def stop_server_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """Stop a server from :func:`start_server_process`: SIGTERM to its process group, wait, then SIGKILL."""
    from harness.lifecycle import stop_process_group

    return stop_process_group(proc, timeout_s)


def _probability(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability is in [0, 1], got {x}")
    return x


def _seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if x < 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {x}")
    return x


def _kinds(text: str) -> tuple[str, ...]:
    try:
        return parse_fault_kinds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="transformers model dir or 'default' (embedded SmolLM2)")
    p.add_argument("--name", default=None, help="served model name (default: the dir name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1,
                   help="batches answered at once, each in a thread (default 1; 2 uses a second CPU core)")
    p.add_argument("--chat-template", default="tokenizer", help="'tokenizer' or a named template (janus-mistral)")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="exit when process PID exits (start_server_process sets it, so that the judge "
                        "server of a run dies with the run)")
    p.add_argument("--no-pdeathsig", action="store_true", help=argparse.SUPPRESS)
    g = p.add_argument_group("fault injection", "test a client against a misbehaving server (off by default)")
    g.add_argument("--fault-rate", type=_probability, default=0.0, metavar="P",
                   help="probability that a request gets a fault (default 0: none)")
    g.add_argument("--fault-kinds", type=_kinds, default=FAULT_KINDS, metavar="K1,K2",
                   help="comma list of fault kinds, drawn uniformly per faulty request (default: all): "
                        "429 (with Retry-After), 500, timeout (held --fault-timeout-s, then 504), "
                        "truncated_json (a 200 with cut-off JSON), empty_choices (a 200 with no choices), "
                        "null_content (a 200 with null content), echo_secret (a 401 whose body echoes the "
                        "Authorization bearer token), out_of_range (an answer with an out-of-range score, "
                        "'Rating: [[42]]')")
    g.add_argument("--latency", type=_seconds, default=0.0, metavar="SECONDS",
                   help="fixed latency added to every request (default 0)")
    g.add_argument("--fault-timeout-s", type=_seconds, default=Faults.timeout_sleep_s, metavar="SECONDS",
                   help=f"how long a 'timeout' fault holds the answer (default {Faults.timeout_sleep_s:g})")
    g.add_argument("--fault-seed", type=int, default=0, metavar="N", help="seed of the fault draws (default 0)")


def faults_from_args(args: argparse.Namespace) -> Faults:
    return Faults(rate=args.fault_rate, kinds=args.fault_kinds, latency_s=args.latency,
                  timeout_sleep_s=args.fault_timeout_s, seed=args.fault_seed)


def run_from_args(args: argparse.Namespace) -> int:
    if args.workers < 1:  # before the model load
        raise SystemExit(f"harness serve: --workers must be >= 1, got {args.workers}")
    if getattr(args, "parent_pid", None):  # before the slow imports and the model load
        from harness.lifecycle import tie_to_parent

        tie_to_parent(args.parent_pid, pdeathsig=not getattr(args, "no_pdeathsig", False))

    import uvicorn

    from harness.backends.hf import HFBackend

    faults = faults_from_args(args)
    backend = HFBackend(args.model, chat_template=args.chat_template, batch_size=args.batch_size)
    backend.load()
    name = args.name or os.path.basename(os.path.normpath(backend.path))
    uvicorn.run(build_app(backend, name, faults, workers=args.workers), host=args.host, port=args.port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="harness serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
