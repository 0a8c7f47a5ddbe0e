"""A small OpenAI-compatible server over any harness backend (``harness serve``).

It gives tests and the demo a real HTTP judge endpoint on 127.0.0.1: chat and legacy
completions, ``n`` > 1, logprobs/top_logprobs, and vLLM's ``continue_final_message``
extension (used for logprob scoring). Concurrent requests are gathered into batches
for the backend. Fault injection (for reliability tests and benchmarks) is optional.
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

from harness.backends.base import Backend, GenRequest, GenResult


@dataclass
class Faults:
    """Per-request fault probabilities (drawn from a seeded RNG) and a fixed latency."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    timeout_sleep_s: float = 5.0
    retry_after_s: float = 0.05
    latency_s: float = 0.0
    always_fail_marker: str | None = None  # a prompt containing this always gets a 500
    seed: int = 0


class Batcher:
    """Collects concurrent requests into backend batches of at most ``max_batch``."""

    def __init__(self, backend: Backend, wait_s: float = 0.005):
        self.backend = backend
        self.wait_s = wait_s
        self.queue: asyncio.Queue | None = None
        self._task = None

    async def submit(self, reqs: list[GenRequest]) -> list[GenResult]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self._task = asyncio.create_task(self._loop())
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
                results = await self.backend.generate([r for r, _ in items])
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


def _completion_logprobs(res: GenResult) -> dict | None:
    if res.logprobs is None:
        return None
    return {"tokens": [t.token for t in res.logprobs], "token_logprobs": [t.logprob for t in res.logprobs],
            "top_logprobs": [dict(t.top) for t in res.logprobs], "text_offset": []}


def build_app(backend: Backend, served_name: str, faults: Faults | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI(title="harness serve")
    batcher = Batcher(backend)
    faults = faults or Faults()
    rng = random.Random(faults.seed)
    counters = {"requests": 0, "faults": 0}
    app.state.counters = counters

    async def maybe_fault(body: dict):
        counters["requests"] += 1
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        text = str(body.get("messages") or body.get("prompt") or "")
        if faults.always_fail_marker and faults.always_fail_marker in text:
            counters["faults"] += 1
            return JSONResponse({"error": {"message": "injected permanent failure"}}, status_code=500)
        x = rng.random()
        edges = [(faults.rate_429, "429"), (faults.rate_500, "500"), (faults.rate_timeout, "timeout"),
                 (faults.rate_malformed, "malformed")]
        acc = 0.0
        for p, kind in edges:
            acc += p
            if x < acc:
                counters["faults"] += 1
                if kind == "429":
                    return JSONResponse({"error": {"message": "rate limited"}}, status_code=429,
                                        headers={"retry-after": str(faults.retry_after_s)})
                if kind == "500":
                    return JSONResponse({"error": {"message": "injected server error"}}, status_code=500)
                if kind == "timeout":
                    await asyncio.sleep(faults.timeout_sleep_s)
                    return JSONResponse({"error": {"message": "late"}}, status_code=504)
                return PlainTextResponse('{"id": "x", "choices": [ {"trunc', media_type="application/json")
        return None

    def requests_from(body: dict, chat: bool) -> list[GenRequest]:
        n = int(body.get("n") or 1)
        top = body.get("top_logprobs") if chat else body.get("logprobs")
        want_lp = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
        base = dict(max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
                    temperature=float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0),
                    top_p=float(body.get("top_p") or 1.0), repetition_penalty=body.get("repetition_penalty"),
                    stop=[body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop"),
                    logprobs=want_lp, top_logprobs=int(top or 0), seed=body.get("seed"))
        if chat:
            base.update(messages=body["messages"], continue_final_message=bool(body.get("continue_final_message")))
        else:
            prompt = body["prompt"]
            base.update(prompt=prompt if isinstance(prompt, str) else prompt[0])
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

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        fault = await maybe_fault(body)
        if fault is not None:
            return fault
        results = await batcher.submit(requests_from(body, chat=True))
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": served_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                             "finish_reason": r.finish_reason or "stop", "logprobs": _chat_logprobs(r)}
                            for i, r in enumerate(results)],
                "usage": usage(results)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        fault = await maybe_fault(body)
        if fault is not None:
            return fault
        results = await batcher.submit(requests_from(body, chat=False))
        return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
                "model": served_name,
                "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason or "stop",
                             "logprobs": _completion_logprobs(r)} for i, r in enumerate(results)],
                "usage": usage(results)}

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
                         log_path: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``harness serve`` as a child process and wait until it answers."""
    import httpx

    port = port or free_port()
    cmd = [sys.executable, "-m", "harness.serve", "--model", model, "--name", served_name, "--port", str(port),
           "--batch-size", str(batch_size), "--chat-template", chat_template]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
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
    proc.kill()
    raise RuntimeError(f"judge server did not answer on {url} within {timeout_s}s")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="transformers model dir or 'default' (embedded SmolLM2)")
    p.add_argument("--name", default=None, help="served model name (default: the dir name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chat-template", default="tokenizer", help="'tokenizer' or a named template (janus-mistral)")


def run_from_args(args: argparse.Namespace) -> int:
    import uvicorn

    from harness.backends.hf import HFBackend

    backend = HFBackend(args.model, chat_template=args.chat_template, batch_size=args.batch_size)
    backend.load()
    name = args.name or os.path.basename(os.path.normpath(backend.path))
    uvicorn.run(build_app(backend, name), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="harness serve", description=__doc__)
    add_args(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
