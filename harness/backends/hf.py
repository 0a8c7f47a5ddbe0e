"""transformers backend: batched generation with left padding, chat templates, logprobs."""
from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path

from harness.backends.base import Backend, GenRequest, GenResult
from harness.backends.hf_batching import finish
from harness.models import looks_local, resolve_model_path
from harness.templates import render_chat


class HFBackend(Backend):
    name = "hf"
    max_batch = 8
    default_concurrency = 1
    supports_loglikelihood = True
    local = True  # no HTTP timeout: a CPU batch can take minutes

    def __init__(self, model: str, chat_template: str = "tokenizer", dtype: str = "float32",
                 batch_size: int = 8, trust_remote_code: bool = False, device: str = "cpu",
                 threads: int | None = None, prefix_cache: int = 4, dynamic_batching: bool = True, **options):
        super().__init__(model, **options)
        self.path = resolve_model_path(model)
        # "org/name" may be a hub id (loaded when online); anything path-like must exist
        if looks_local(self.path) and not Path(self.path).exists():
            raise FileNotFoundError(f"model path does not exist: {self.path}")
        self.chat_template = chat_template
        self.dtype = dtype
        self.max_batch = batch_size
        self.trust_remote_code = trust_remote_code
        self.device = device
        self.threads = threads
        self._model = None
        self._tok = None
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        # greedy requests skip generate(): see _fast_path (off: prefix_cache=0, dynamic_batching=False)
        self.dynamic_batching = dynamic_batching
        self._prefixes = None
        if prefix_cache:
            from harness.backends.prefix_cache import PrefixCache

            self._prefixes = PrefixCache(int(prefix_cache))
        self._grammars = None  # structured.GrammarCache, built on the first json_schema

    @property
    def model_id(self) -> str:
        # the weights identify the model, not the directory it was loaded from
        return f"hf:{self.fingerprint}:{self.chat_template}"

    @property
    def fingerprint(self) -> str:
        # computed once: model_id is read for every request the call layer sees
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.path)
        return self._fingerprint

    def load(self):
        with self._lock:
            if self._model is None:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                if self.threads:
                    torch.set_num_threads(self.threads)
                self._tok = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
                self._tok.padding_side = "left"
                if self._tok.pad_token is None:
                    self._tok.pad_token = self._tok.eos_token
                self._model = AutoModelForCausalLM.from_pretrained(
                    self.path, dtype=getattr(torch, self.dtype), trust_remote_code=self.trust_remote_code)
                self._model.to(self.device).eval()
        return self._model, self._tok

    @property
    def tokenizer(self):
        return self.load()[1]

    @property
    def config(self):
        return self.load()[0].config

    def grammars(self):
        from harness.backends.structured import GrammarCache

        model, tok = self.load()
        with self._lock:
            if self._grammars is None:
                # the model's vocabulary may be padded beyond the tokenizer's
                self._grammars = GrammarCache(tok, vocab_size=model.config.vocab_size)
        return self._grammars

    def check_json_schema(self, schema: dict) -> None:
        self.grammars().compiled(schema)

    def render(self, req: GenRequest) -> str:
        tok = self.tokenizer
        if req.messages is not None:
            return render_chat(tok, req.messages, self.chat_template,
                               continue_final_message=req.continue_final_message)
        return req.prompt or ""

    def sort_key(self, req: GenRequest):
        if self._prefixes is not None and req.max_tokens == 1 and req.temperature == 0 and not req.is_loglikelihood:
            # one-token prompts (logprob judges) keep the caller's order, which puts the rubric prompts
            # of one answer together: the prefix path runs their shared prefix once
            return (0,)
        if req.prompt_tokens is not None:
            return (len(req.prompt_tokens) + len(req.continuation_tokens or ()), req.max_tokens)
        text = req.prompt if req.messages is None else "".join(m["content"] for m in req.messages)
        return (len(text or ""), req.max_tokens)

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return await asyncio.to_thread(self.generate_sync, requests)

    def generate_sync(self, requests: list[GenRequest]) -> list[GenResult]:
        # one generate() per distinct sampling setup; rows are independent otherwise
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if r.is_loglikelihood:
                sig: tuple = ("loglikelihood",)
            else:
                sig = (r.max_tokens, r.temperature, r.top_p, r.repetition_penalty, r.logprobs, r.top_logprobs,
                       tuple(r.stop or ()), r.prompt_tokens is not None, r.json_schema is not None)
            groups.setdefault(sig, []).append(i)
        for r in requests:  # an uncompilable schema fails the batch before any generation
            if r.json_schema is not None:
                self.check_json_schema(r.json_schema)
        out: list[GenResult | None] = [None] * len(requests)
        for sig, idx in groups.items():
            run = self._loglikelihood_group if sig == ("loglikelihood",) else self._generate_group
            for i, res in zip(idx, run([requests[i] for i in idx])):
                out[i] = res
        return out  # type: ignore[return-value]

    def _loglikelihood_group(self, reqs: list[GenRequest]) -> list[GenResult]:
        t0 = time.perf_counter()
        seqs = [list(r.prompt_tokens or []) + list(r.continuation_tokens) for r in reqs]
        starts = [len(r.prompt_tokens or []) for r in reqs]
        scored = self.score_tokens(seqs, starts)
        latency = (time.perf_counter() - t0) / len(reqs)
        return [GenResult(loglikelihood=sum(lp for lp, _, _ in rows), is_greedy=all(g for _, g, _ in rows),
                          finish_reason="scored", prompt_tokens=len(seq), latency_s=latency)
                for rows, seq in zip(scored, seqs)]

    def score_tokens(self, seqs: list[list[int]], starts: list[int], top_k: int = 0
                     ) -> list[list[tuple[float, bool, list[tuple[int, float]]]]]:
        """Per token ``seq[j]`` for ``j >= start`` (``start >= 1``): its log-probability given
        ``seq[:j]``, whether it is the argmax, and the ``top_k`` most likely token ids.

        One right-padded forward pass per batch; the last token is never fed in (it predicts
        nothing), which is how lm-eval's ``hf`` model builds its loglikelihood inputs.
        """
        import torch

        model, tok = self.load()
        out = []
        for b in range(0, len(seqs), self.max_batch):
            chunk, chunk_starts = seqs[b:b + self.max_batch], starts[b:b + self.max_batch]
            inps = [s[:-1] for s in chunk]
            width = max(len(x) for x in inps)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            ids = torch.tensor([x + [pad] * (width - len(x)) for x in inps], dtype=torch.long)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in inps], dtype=torch.long)
            with torch.no_grad():
                logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, seq, start in zip(logp, chunk, chunk_starts):
                if start < 1:
                    raise ValueError("score_tokens: the first scored token needs at least one token before it")
                targets = torch.tensor(seq[start:], dtype=torch.long)
                lp = row[start - 1:len(seq) - 1]  # position j-1 predicts token j
                chosen = lp.gather(1, targets.unsqueeze(1)).squeeze(1)
                greedy = lp.argmax(-1) == targets
                tops = [[]] * len(targets)
                if top_k:
                    vals, idxs = lp.topk(top_k, dim=-1)
                    tops = [list(zip(i.tolist(), v.tolist())) for v, i in zip(vals, idxs)]
                out.append([(float(c), bool(g), t) for c, g, t in zip(chosen, greedy, tops)])
        return out

    def _fast_path(self, reqs: list[GenRequest]) -> list[GenResult] | None:
        """Requests without generate(): one-token plain greedy ones share their prompt prefixes
        (``prefix_cache``), the others decode in dynamic batches (``hf_batching``). None: not here."""
        from harness.backends import hf_batching, prefix_cache

        model, _ = self.load()
        if not hf_batching.eligible(model, reqs):
            return None
        if self._prefixes is not None and hf_batching.plain_greedy(reqs) and prefix_cache.eligible(model, reqs):
            return prefix_cache.one_token(self, self._prefixes, reqs)
        return hf_batching.decode(self, reqs) if self.dynamic_batching else None

    def _generate_group(self, reqs: list[GenRequest]) -> list[GenResult]:
        import torch

        fast = self._fast_path(reqs)
        if fast is not None:
            return fast

        model, tok = self.load()
        t0 = time.perf_counter()
        if reqs[0].prompt_tokens is not None:  # tokenized by the caller: used as given
            texts = [str(r.prompt_tokens) for r in reqs]
            enc = _left_pad([r.prompt_tokens for r in reqs], tok.pad_token_id)
        else:
            texts = [self.render(r) for r in reqs]
            # chat templates already contain BOS/special tokens
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=reqs[0].messages is None)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        r0 = reqs[0]
        # sampling and penalties draw per request (hf_sampling): generate() runs greedy over the draws
        kwargs = dict(max_new_tokens=r0.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                      return_dict_in_generate=True, output_logits=bool(r0.logprobs),
                      temperature=None, top_p=None, top_k=None)
        processors = []
        if r0.json_schema is not None:  # every row of this group has a schema (see generate_sync)
            processors.append(self.grammars().logits_processor([r.json_schema for r in reqs]))
        if r0.temperature > 0 or r0.repetition_penalty:
            from harness.backends.hf_sampling import RowSampler

            ids = [[int(t) for t, m in zip(row, mrow) if m] for row, mrow in zip(enc["input_ids"].tolist(),
                                                                                 enc["attention_mask"].tolist())]
            processors.append(RowSampler(reqs, ids).processor())
        if processors:
            kwargs["logits_processor"] = processors
        with torch.no_grad():
            gen = model.generate(**enc, **kwargs)
        seqs = gen.sequences[:, enc["input_ids"].shape[1]:]
        eos_ids = set(_as_list(model.generation_config.eos_token_id)) | {tok.eos_token_id}
        latency = time.perf_counter() - t0
        logprobs_all = None
        if r0.logprobs:
            logprobs_all = torch.stack(gen.logits, dim=1).float().log_softmax(-1)  # (B, T, V)
        prompt_lens = [int(m.sum()) for m in enc["attention_mask"]]
        return finish(tok, eos_ids, reqs, seqs.tolist(), logprobs_all, prompt_lens, latency)


def weights_fingerprint(path: str) -> str:
    """``<dir name>-<hash>`` of a model directory's configs and weights (hub ids: the id)."""
    p = Path(path)
    if not p.exists():
        return path
    h = hashlib.sha256()
    for f in sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
        if f.suffix == ".json":
            h.update(f.read_bytes())
    # weights: size plus first/last MiB keeps this fast for multi-GB files
    for f in sorted(p.glob("*.safetensors")):
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, f.stat().st_size - (1 << 20)))
            h.update(fh.read())
    return f"{p.name}-{h.hexdigest()[:12]}"


def _left_pad(rows: list[list[int]], pad_id: int) -> dict:
    import torch

    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
