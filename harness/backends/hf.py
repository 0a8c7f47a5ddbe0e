"""transformers backend: batched generation with left padding, chat templates, logprobs."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from pathlib import Path

from harness.backends.base import Backend, GenRequest, GenResult, TokenLogprob
from harness.models import looks_local, resolve_model_path
from harness.templates import render_chat

# one process-wide lock: torch's default generator is process-wide too
_SAMPLING_LOCK = threading.Lock()


class HFBackend(Backend):
    name = "hf"
    max_batch = 8
    default_concurrency = 1
    local = True  # no HTTP timeout: a CPU batch can take minutes

    def __init__(self, model: str, chat_template: str = "tokenizer", dtype: str = "float32",
                 batch_size: int = 8, trust_remote_code: bool = False, device: str = "cpu",
                 threads: int | None = None, **options):
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

    def render(self, req: GenRequest) -> str:
        tok = self.tokenizer
        if req.messages is not None:
            return render_chat(tok, req.messages, self.chat_template,
                               continue_final_message=req.continue_final_message)
        return req.prompt or ""

    def sort_key(self, req: GenRequest):
        text = req.prompt if req.messages is None else "".join(m["content"] for m in req.messages)
        return (len(text or ""), req.max_tokens)

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return await asyncio.to_thread(self.generate_sync, requests)

    def generate_sync(self, requests: list[GenRequest]) -> list[GenResult]:
        # one generate() per distinct sampling setup; rows are independent otherwise
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            sig = (r.max_tokens, r.temperature, r.top_p, r.repetition_penalty, r.logprobs, r.top_logprobs,
                   tuple(r.stop or ()))
            groups.setdefault(sig, []).append(i)
        out: list[GenResult | None] = [None] * len(requests)
        for idx in groups.values():
            for i, res in zip(idx, self._generate_group([requests[i] for i in idx])):
                out[i] = res
        return out  # type: ignore[return-value]

    def _generate_group(self, reqs: list[GenRequest]) -> list[GenResult]:
        import torch

        model, tok = self.load()
        t0 = time.perf_counter()
        texts = [self.render(r) for r in reqs]
        # chat templates already contain BOS/special tokens
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=reqs[0].messages is None)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        r0 = reqs[0]
        sample = r0.temperature > 0
        kwargs = dict(max_new_tokens=r0.max_tokens, do_sample=sample, pad_token_id=tok.pad_token_id,
                      return_dict_in_generate=True, output_logits=bool(r0.logprobs))
        if sample:
            kwargs.update(temperature=r0.temperature, top_p=r0.top_p, top_k=0)
            seed_src = "|".join(f"{r.seed}:{r.sample_index}:{t}" for r, t in zip(reqs, texts))
            seed = int(hashlib.sha256(seed_src.encode()).hexdigest()[:8], 16)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if r0.repetition_penalty:
            kwargs["repetition_penalty"] = r0.repetition_penalty
        # sampling draws from torch's one global generator, seeded just above: two batches sampling
        # at once (call-layer concurrency > 1) would interleave their draws and change each other's text
        with (_SAMPLING_LOCK if sample else contextlib.nullcontext()), torch.no_grad():
            if sample:
                torch.manual_seed(seed)
            gen = model.generate(**enc, **kwargs)
        seqs = gen.sequences[:, enc["input_ids"].shape[1]:]
        eos_ids = set(_as_list(model.generation_config.eos_token_id)) | {tok.eos_token_id}
        latency = time.perf_counter() - t0
        results = []
        logprobs_all = None
        if r0.logprobs:
            logprobs_all = torch.stack(gen.logits, dim=1).float().log_softmax(-1)  # (B, T, V)
        for b, r in enumerate(reqs):
            ids = seqs[b].tolist()
            n, finish = len(ids), "length"
            for j, t in enumerate(ids):
                if t in eos_ids:
                    n, finish = j + 1, "stop"
                    break
                if t == tok.pad_token_id and tok.pad_token_id not in eos_ids:
                    n, finish = j, "stop"
                    break
            text = tok.decode(ids[:n], skip_special_tokens=True)
            if r.stop:
                cut = min((text.find(s) for s in r.stop if s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            lps = None
            if logprobs_all is not None:
                lps = []
                for j in range(n):
                    row = logprobs_all[b, j]
                    top = []
                    if r.top_logprobs:
                        vals, idxs = row.topk(r.top_logprobs)
                        top = [(tok.decode([int(k)]), float(v)) for v, k in zip(vals, idxs)]
                    lps.append(TokenLogprob(tok.decode([ids[j]]), float(row[ids[j]]), top))
            results.append(GenResult(text=text, finish_reason=finish,
                                     prompt_tokens=int(enc["attention_mask"][b].sum()), completion_tokens=n,
                                     logprobs=lps, latency_s=latency / len(reqs)))
        return results


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


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
