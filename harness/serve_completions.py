"""``/v1/completions`` of ``harness serve``: the request body, prompt scoring for ``echo``, the answer.

What lm-eval's ``local-completions`` model relies on (and vLLM does): ``prompt`` may be a string, a
list of strings, a list of token ids or a list of token-id lists, one choice per prompt (times ``n``)
in order; ``echo`` with ``logprobs`` returns the prompt's own tokens with their log-probabilities
(the first one null) followed by the generated tokens. lm-eval's loglikelihood is
``sum(token_logprobs[ctxlen:-1])`` of such an answer to ``max_tokens: 1``, and its is_greedy compares
each token's logprob with the best of ``top_logprobs``.

Prompt log-probabilities come from the backend's ``score_tokens`` (the hf backend: one forward
pass, as lm-eval's ``hf`` model computes them). A backend without it answers HTTP 400 to
``echo`` + ``logprobs``: a client must never get numbers that were not computed.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

from harness.backends.base import Backend, GenRequest, GenResult

MAX_LOGPROBS = 20  # vLLM's default max_logprobs
DEFAULT_MAX_TOKENS = 256

Prompt = str | list[int]
ScoreRows = list[tuple[float, bool, list[tuple[int, float]]]]
Generate = Callable[[list[GenRequest]], Awaitable[list[GenResult]]]
Score = Callable[[list[tuple[list[int], int, int]]], Awaitable[list[ScoreRows]]]


class BadRequest(ValueError):
    """A request the server refuses: HTTP 400 with ``param`` naming the field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class Plan:
    """A checked completions body."""

    prompts: list[Prompt]
    n: int
    echo: bool
    logprobs: int | None  # None: no logprobs; k: the k most likely tokens per position
    max_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float | None
    stop: list[str] | None
    seed: int | None
    json_schema: dict | None = None  # from response_format

    @property
    def scores_prompt(self) -> bool:
        return self.echo and self.logprobs is not None


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _prompts(value) -> list[Prompt]:
    shape = "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(_is_id(x) for x in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest("prompt", shape)
    for i, p in enumerate(value):
        if not (isinstance(p, str) or (isinstance(p, list) and all(_is_id(x) for x in p))):
            raise BadRequest("prompt", f"{shape}; prompt[{i}] is neither a string nor a list of token ids "
                                       "(integers >= 0)")
        if not p:
            raise BadRequest("prompt", f"prompt[{i}] is empty")
    return [p if isinstance(p, str) else list(p) for p in value]


def _int(body: dict, name: str, default, low: int, high: int | None = None):
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(name, f"{name} must be an integer {bound}, got {v!r}")
    return v


def _float(body: dict, name: str, default: float, low: float, high: float | None = None) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < low or (high is not None and v > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise BadRequest(name, f"{name} must be a number {bound}, got {v!r}")
    return float(v)


def response_format_schema(body: dict) -> dict | None:
    """The JSON schema a body's ``response_format`` asks for (OpenAI's shape, which vLLM accepts
    on chat and completions): ``json_schema`` -> its ``schema``; ``json_object`` -> any object;
    ``text`` or absent -> None."""
    rf = body.get("response_format")
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format", "response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise BadRequest("response_format", "response_format.type must be text, json_object or json_schema, "
                                        f"got {kind!r}")


def check_schema(backend: Backend, schema: dict) -> None:
    """``BadRequest`` (before any model call) if the backend cannot honour the schema."""
    from harness.backends.structured import check_schema as valid_schema

    try:
        valid_schema(schema, "response_format")
        backend.check_json_schema(schema)
    except ValueError as e:
        raise BadRequest("response_format", str(e)) from None


def parse(body: dict) -> Plan:
    """The completions body as a :class:`Plan`; :class:`BadRequest` names the first bad field."""
    if "prompt" not in body:
        raise BadRequest("prompt", "prompt is required")
    prompts = _prompts(body["prompt"])
    if body.get("stream"):
        raise BadRequest("stream", "stream is not supported")
    for name in ("suffix", "logit_bias"):
        if body.get(name):
            raise BadRequest(name, f"{name} is not supported")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise BadRequest("echo", f"echo must be true or false, got {echo!r}")
    n = _int(body, "n", 1, 1, 128)
    if _int(body, "best_of", n, 1) != n:
        raise BadRequest("best_of", "best_of other than n is not supported")
    max_tokens = _int(body, "max_tokens", None, 0)
    if max_tokens is None:
        max_tokens = _int(body, "max_completion_tokens", DEFAULT_MAX_TOKENS, 0)
    if max_tokens == 0 and not echo:
        raise BadRequest("max_tokens", "max_tokens 0 needs echo: true (it returns only the prompt)")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("stop", "stop must be a non-empty string or a list of them")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise BadRequest("seed", f"seed must be an integer, got {seed!r}")
    return Plan(prompts=prompts, n=n, echo=echo, logprobs=_int(body, "logprobs", None, 0, MAX_LOGPROBS),
                max_tokens=max_tokens, temperature=_float(body, "temperature", 1.0, 0.0),
                top_p=_float(body, "top_p", 1.0, 0.0, 1.0),
                repetition_penalty=(_float(body, "repetition_penalty", 1.0, 0.0)
                                    if body.get("repetition_penalty") is not None else None),
                stop=stop or None, seed=seed, json_schema=response_format_schema(body))


def can_score(backend: Backend) -> bool:
    return callable(getattr(backend, "score_tokens", None))


def _has_tokenizer(backend: Backend) -> bool:
    return hasattr(type(backend), "tokenizer")  # on the class: reading it would load the model


def make_score(backend: Backend) -> Score:
    """The batch function of the server's scoring lane: items ``(seq, start, top_k)`` -> rows,
    one ``score_tokens`` call (in a thread) per batch."""

    def score(items):
        top_k = max(k for _, _, k in items)
        rows = backend.score_tokens([s for s, _, _ in items], [st for _, st, _ in items], top_k)
        return [[(lp, g, top[:k]) for lp, g, top in r] for r, (_, _, k) in zip(rows, items)]

    return lambda items: asyncio.to_thread(score, items)


def _eos_ids(backend) -> set[int]:
    ids = {backend.tokenizer.eos_token_id}
    eos = getattr(backend.config, "eos_token_id", None)
    ids |= set(eos if isinstance(eos, (list, tuple)) else [eos])
    return {i for i in ids if i is not None}


def _cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    cut = min((text.find(s) for s in (stop or ()) if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Completer:
    """Answers a :class:`Plan`: generation through ``generate``, prompt scoring through ``score``
    (the server's two batching lanes; a scoring pass never joins a generation batch)."""

    def __init__(self, backend: Backend, generate: Generate, score: Score | None):
        self.backend = backend
        self.generate = generate
        self.score = score

    def check(self, plan: Plan) -> None:
        """Refusals that depend on the backend (before any model call)."""
        tokens = [(i, p) for i, p in enumerate(plan.prompts) if not isinstance(p, str)]
        if plan.scores_prompt and not can_score(self.backend):
            raise BadRequest("echo", f"the {self.backend.name} backend cannot score prompts: "
                                     "echo with logprobs is not available")
        if (tokens or plan.scores_prompt) and not _has_tokenizer(self.backend):
            raise BadRequest("prompt", f"the {self.backend.name} backend takes text prompts only")
        for i, p in tokens:
            vocab = self.backend.config.vocab_size
            bad = [t for t in p if t >= vocab]
            if bad:
                raise BadRequest("prompt", f"prompt[{i}] has token id {bad[0]} outside the vocabulary (size {vocab})")
            self._check_length(i, len(p), plan.max_tokens)
        if plan.json_schema is not None:
            if plan.scores_prompt:  # the echoed prompt and a next token read off the scores ignore it
                raise BadRequest("response_format", "response_format cannot be combined with echo and logprobs")
            check_schema(self.backend, plan.json_schema)

    def _check_length(self, i: int, n_tokens: int, max_tokens: int) -> None:
        limit = getattr(self.backend.config, "max_position_embeddings", None)
        if limit and n_tokens + max_tokens > limit:
            raise BadRequest("prompt", f"prompt[{i}] has {n_tokens} tokens: with max_tokens {max_tokens} that "
                                       f"exceeds the model's {limit} positions")

    async def answer(self, plan: Plan, generate: Generate | None = None) -> tuple[list[dict], dict]:
        """``choices`` and ``usage``. ``generate`` replaces the generation lane (fault injection does;
        the answer then always comes from it)."""
        greedy_from_scores = generate is None
        generate = generate or self.generate
        self.check(plan)
        if not plan.scores_prompt:
            return await self._generated(plan, generate)
        tok = self.backend.tokenizer
        ids = [tok(p).input_ids if isinstance(p, str) else p for p in plan.prompts]  # as the hf backend does
        for i, x in enumerate(ids):
            if not x:
                raise BadRequest("prompt", f"prompt[{i}] has no tokens")
            self._check_length(i, len(x), plan.max_tokens)
        k = plan.logprobs or 0
        # greedy 1 token: the scoring pass already holds the next-token distribution when the
        # prompt is scored with one placeholder token appended (its own logprob is dropped)
        one_pass = greedy_from_scores and plan.max_tokens == 1 and plan.temperature == 0
        items = [(x + [0], 1, max(k, 1)) if one_pass else (x, 1, k) for x in ids]
        todo = [j for j, (seq, _, _) in enumerate(items) if len(seq) > 1]
        scored: list[ScoreRows] = [[] for _ in items]
        for j, rows in zip(todo, await self.score([items[j] for j in todo]) if todo else []):
            scored[j] = rows
        gen: list[list[GenResult]] = [[] for _ in ids]
        if plan.max_tokens and not one_pass:
            reqs = [GenRequest(prompt_tokens=x, logprobs=True, top_logprobs=k, **self._gen_args(plan, s))
                    for x in ids for s in range(plan.n)]
            res = await generate(reqs)
            gen = [res[i * plan.n:(i + 1) * plan.n] for i in range(len(ids))]
        choices, completion = [], 0
        for i, (prompt, x, rows) in enumerate(zip(plan.prompts, ids, scored)):
            head = self._prompt_part(x, rows[:len(x) - 1], k)
            prompt_text = prompt if isinstance(prompt, str) else tok.decode(x)
            for s in range(plan.n):
                if one_pass:
                    text, finish, tail = self._next_token(rows[-1][2], k, plan.stop)
                elif gen[i]:
                    r = gen[i][s]
                    text, finish = r.text, r.finish_reason or "stop"
                    tail = [(t.token, t.logprob, _top_dict(t.top)) for t in r.logprobs or []]
                else:  # max_tokens 0: the prompt alone
                    text, finish, tail = "", "length", []
                choices.append(_choice(len(choices), prompt_text + text, finish, head + tail))
                completion += len(tail)
        return choices, _usage(sum(len(x) for x in ids), completion)

    async def _generated(self, plan: Plan, generate: Generate) -> tuple[list[dict], dict]:
        reqs = []
        for p in plan.prompts:
            source = dict(prompt=p) if isinstance(p, str) else dict(prompt_tokens=p)
            reqs += [GenRequest(**source, logprobs=plan.logprobs is not None, top_logprobs=plan.logprobs or 0,
                                **self._gen_args(plan, s)) for s in range(plan.n)]
        results = await generate(reqs)
        choices = []
        for j, (req, r) in enumerate(zip(reqs, results)):
            prompt = req.prompt if req.prompt is not None else self.backend.tokenizer.decode(req.prompt_tokens)
            lps = None if r.logprobs is None or plan.logprobs is None else \
                [(t.token, t.logprob, _top_dict(t.top)) for t in r.logprobs]
            # text_offset counts from the start of the prompt, echoed or not (as OpenAI)
            choices.append(_choice(j, (prompt if plan.echo else "") + r.text, r.finish_reason or "stop", lps,
                                   text_start=len(prompt)))
        prompt_tokens = sum(r.prompt_tokens for r in results[::plan.n])
        return choices, _usage(prompt_tokens, sum(r.completion_tokens for r in results))

    @staticmethod
    def _gen_args(plan: Plan, sample_index: int) -> dict:
        return dict(max_tokens=plan.max_tokens, temperature=plan.temperature, top_p=plan.top_p,
                    repetition_penalty=plan.repetition_penalty, stop=plan.stop, seed=plan.seed,
                    json_schema=plan.json_schema, sample_index=sample_index)

    def _prompt_part(self, ids: list[int], rows: ScoreRows, k: int) -> list[tuple]:
        """(token, logprob, top) per prompt token; the first has no context, so null/null."""
        names = self._names(ids + [t for _, _, top in rows for t, _ in top[:k]])
        tops = iter(names[len(ids):])
        out = [(names[0], None, None)]
        for name, (lp, _, top) in zip(names[1:], rows):
            out.append((name, lp, _top_dict([(next(tops), v) for _, v in top[:k]])))
        return out

    def _next_token(self, top: list[tuple[int, float]], k: int, stop) -> tuple[str, str, list[tuple]]:
        tid, lp = top[0]
        names = self._names([t for t, _ in top[:max(k, 1)]])
        text = self.backend.tokenizer.decode([tid], skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, stop)
        finish = "stop" if stopped or tid in _eos_ids(self.backend) else "length"
        return text, finish, [(names[0], lp, _top_dict(list(zip(names, [v for _, v in top]))[:k]))]

    def _names(self, ids: list[int]) -> list[str]:
        return self.backend.tokenizer.batch_decode([[t] for t in ids]) if ids else []


def _top_dict(pairs) -> dict[str, float]:
    # two ids can decode to the same text: keep the first (most likely), never a lower value
    out: dict[str, float] = {}
    for name, lp in pairs:
        out.setdefault(name, lp)
    return out


def _choice(index: int, text: str, finish: str, lps: list[tuple] | None, text_start: int = 0) -> dict:
    logprobs = None
    if lps is not None:
        offsets, at = [], text_start
        for name, _, _ in lps:  # as vLLM: the running length of the token texts
            offsets.append(at)
            at += len(name)
        logprobs = {"tokens": [t for t, _, _ in lps], "token_logprobs": [lp for _, lp, _ in lps],
                    "top_logprobs": [top for _, _, top in lps], "text_offset": offsets}
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def payload(choices: list[dict], usage: dict, served_name: str) -> dict:
    return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
            "model": served_name, "choices": choices, "usage": usage}

