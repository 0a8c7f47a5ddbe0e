"""Generation for the hf backend without ``model.generate``: dynamic batches.

A left-padded prefill, then one forward per step over the rows still generating: a row that
ends (EOS, or a pad token) leaves the batch and its cache rows are dropped, so a batch no
longer computes padding until its longest answer ends, and the per-step overhead of
``generate`` (logits processors, stopping criteria) is gone. The math per row is what
``generate`` does for greedy decoding (positions from the attention mask, argmax of the
last logits), so greedy texts are the same (tests/test_hf_batching.py). Sampled requests and
repetition penalties draw through ``hf_sampling.RowSampler`` (one seeded generator per request);
JSON-schema requests are masked by ``structured.RowGrammars`` before the pick.

A batch whose prompts share a long prefix (a synthesis or judge template) runs that prefix once,
batch 1, or takes it from the backend's ``prefix_cache.PrefixCache`` when an earlier batch ran it;
the suffixes then prefill over its keys and values. On this machine's CPU the prefill of ~900-token
prompts runs at ~300 tokens/s, so a batch of rubric prompts sharing 800 of them prefills ~8x faster.

The KV cache (``growing_cache``) writes each step into preallocated room instead of concatenating:
``DynamicCache`` copies every layer's whole cache once per token (measured: a decode step of 16 rows
at 870 tokens of context, 346 ms with it, 291 ms with this; identical logits).

Models whose generation config adds processors keep ``generate``. One-token greedy requests go
to ``prefix_cache.one_token`` instead (it also splits a batch into groups by prefix).
"""
from __future__ import annotations

import inspect
import time

from harness.backends.base import GenRequest, GenResult, TokenLogprob

# generation-config settings that add logits processors to greedy decoding in ``generate``
_PROCESSOR_FIELDS = ("suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                     "bad_words_ids", "sequence_bias", "min_new_tokens", "no_repeat_ngram_size",
                     "guidance_scale", "watermarking_config")


def eligible(model, reqs: list[GenRequest]) -> bool:
    """Requests this module answers exactly as ``generate`` would."""
    gc = model.generation_config
    if any(getattr(gc, f, None) for f in _PROCESSOR_FIELDS):
        return False
    if (getattr(gc, "min_length", 0) or 0) > 0 or (getattr(gc, "num_beams", 1) or 1) > 1:
        return False
    if (getattr(gc, "repetition_penalty", 1.0) or 1.0) != 1.0:
        return False
    return not any(r.is_loglikelihood for r in reqs)


def plain_greedy(reqs: list[GenRequest]) -> bool:
    return all(r.temperature == 0 and not r.repetition_penalty for r in reqs)


def prompt_ids(backend, reqs: list[GenRequest]) -> list[list[int]]:
    """Each prompt's token ids, as ``_generate_group`` tokenizes them (one row at a time: the same
    ids as a padded batch)."""
    tok = backend.tokenizer
    if reqs[0].prompt_tokens is not None:
        return [list(r.prompt_tokens) for r in reqs]
    # chat templates already contain BOS/special tokens
    special = reqs[0].messages is None
    return [tok(backend.render(r), add_special_tokens=special)["input_ids"] for r in reqs]


def cache_kw(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in recent transformers (which
    deprecates ``past_key_values``), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def check_filled(cache, n: int) -> None:
    """A model that ignored the cache would answer without its context: never silently."""
    if cache.get_seq_length() != n:
        raise RuntimeError(f"hf: the model did not fill the KV cache ({cache.get_seq_length()} of {n} positions); "
                           "set dynamic_batching: false and prefix_cache: 0 for this model")


def stop_ids(model, tok) -> set[int]:
    return set(_as_list(model.generation_config.eos_token_id)) | {tok.eos_token_id}


def growing_cache(model, reserve: int, prefix=None):
    """A ``DynamicCache`` whose layers grow in place (``GrowingLayer``, from ``_layer_class``), filled with
    ``prefix`` (per-layer (keys, values)) when given."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache.layers = [_layer_class()(reserve) for _ in cache.layers]
    for layer, (k, v) in zip(cache.layers, prefix or ()):
        layer.update(k, v)
    return cache


_LAYER = None


def _layer_class():
    """``DynamicLayer`` with room reserved past its tokens: an update writes into it (no copy of the cache);
    room runs out only when a prompt or an answer outgrows the reserve, then it reallocates once."""
    global _LAYER
    if _LAYER is not None:
        return _LAYER
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, reserve: int):
            super().__init__()
            self.reserve, self.n, self._k, self._v = reserve, 0, None, None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, m = self.n, key_states.shape[-2]
            if self._k is None or n + m > self._k.shape[-2]:
                shape = (*key_states.shape[:2], n + m + self.reserve, key_states.shape[-1])
                k, v = key_states.new_empty(shape), value_states.new_empty(shape)
                if n:
                    k[..., :n, :], v[..., :n, :] = self._k[..., :n, :], self._v[..., :n, :]
                self._k, self._v = k, v
            self._k[..., n:n + m, :] = key_states
            self._v[..., n:n + m, :] = value_states
            self.n = n + m
            self.keys, self.values = self._k[..., :self.n, :], self._v[..., :self.n, :]
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            if self._k is not None:
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[..., :self.n, :], self._v[..., :self.n, :]

        def crop(self, tokens_to_remove: int) -> None:  # not used by the decoder; kept consistent
            super().crop(tokens_to_remove)
            if self.is_initialized and self.keys is not None:
                self.n = self.keys.shape[-2]

    _LAYER = GrowingLayer
    return _LAYER


def decode(backend, reqs: list[GenRequest]) -> list[GenResult]:
    """Decode one group (one sampling setup) in a dynamic batch: argmax, or each request's own draws,
    under each request's JSON schema when it has one."""
    import torch

    from harness.backends.hf_sampling import RowSampler

    model, tok = backend.load()
    t0 = time.perf_counter()
    rows = prompt_ids(backend, reqs)
    sampler = None if plain_greedy(reqs) else RowSampler(reqs, rows)
    grammar = None
    if reqs[0].json_schema is not None:  # a group has a schema on every row or on none (generate_sync)
        from harness.backends.structured import RowGrammars

        grammar = RowGrammars(backend.grammars(), reqs)
    pad = tok.pad_token_id
    dev = backend.device
    eos, max_new = stop_ids(model, tok), reqs[0].max_tokens
    want_lp = bool(reqs[0].logprobs)
    out_ids: list[list[int]] = [[] for _ in reqs]
    out_lp: list[list] = [[] for _ in reqs]
    live = list(range(len(reqs)))  # request index of each batch row
    kw = cache_kw(model)
    with torch.no_grad():
        logits, mask, last, cache = _prefill(backend, model, rows, pad, max_new)
        for step in range(max_new):
            if grammar is not None:
                # before the logprobs: they are of the constrained distribution, as generate() reports them
                # (xgrammar masks the logits it returns in place)
                grammar.mask(logits, live)
            lp = logits.log_softmax(-1) if want_lp else None
            if sampler is None:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.tensor(sampler.pick(logits, live), dtype=torch.long, device=dev)
            keep = []
            for j, b in enumerate(live):
                t = int(nxt[j])
                out_ids[b].append(t)
                if grammar is not None:
                    grammar.accept(b, t)
                if lp is not None:
                    out_lp[b].append(lp[j])
                if t not in eos and not (t == pad and pad not in eos):
                    keep.append(j)
            if not keep or step == max_new - 1:
                break
            if len(keep) < len(live):  # finished rows leave the batch
                sel = torch.tensor(keep, device=dev)
                cache.batch_select_indices(sel)
                mask, last, nxt = mask[sel], last[sel], nxt[sel]
                live = [live[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            last = last + 1
            logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last, use_cache=True,
                           **{kw: cache}).logits[:, -1, :].float()
    latency = time.perf_counter() - t0
    return finish(tok, eos, reqs, out_ids, out_lp if want_lp else None, [len(r) for r in rows], latency)


def _prefill(backend, model, rows: list[list[int]], pad: int, max_new: int):
    """(last-token logits, attention mask, position of each row's last token, cache) after the prompts:
    one left-padded batch, or the batch's shared prefix once and the suffixes over it."""
    import torch

    from harness.backends import prefix_cache

    dev = backend.device
    cache = backend._prefixes
    n = prefix_cache.batch_prefix(rows) if cache is not None and prefix_cache.full_attention(model) else 0
    if n:
        kv = prefix_cache.prefix_kv(model, cache, rows[0][:n], dev)
        suffixes = [r[n:] for r in rows]
        dc = growing_cache(model, max(len(x) for x in suffixes) + max_new, prefix_cache.expanded(kv, len(rows)))
        logits, mask, pos, dc = prefix_cache.suffix_prefill(model, dc, n, suffixes, pad, dev)
        return logits, mask, pos[:, -1:], dc
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=dev)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=dev)
    # positions as generate derives them from the mask (pads get 1, as there)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    dc = growing_cache(model, max_new)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                   **{cache_kw(model): dc}).logits[:, -1, :].float()
    check_filled(dc, width)
    return logits, mask, pos[:, -1:], dc


def finish(tok, eos: set[int], reqs: list[GenRequest], out_ids: list[list[int]], out_lp: list[list] | None,
           prompt_lens: list[int], latency: float) -> list[GenResult]:
    """GenResults from generated ids, cut and decoded as ``HFBackend._generate_group`` does."""
    results = []
    for b, r in enumerate(reqs):
        ids = out_ids[b]
        n, reason = len(ids), "length"
        for j, t in enumerate(ids):
            if t in eos:
                n, reason = j + 1, "stop"
                break
            if t == tok.pad_token_id and tok.pad_token_id not in eos:
                n, reason = j, "stop"
                break
        text = tok.decode(ids[:n], skip_special_tokens=True)
        if r.stop:
            cut = min((text.find(s) for s in r.stop if s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        lps = None
        if out_lp is not None:
            lps = []
            for j in range(n):
                row = out_lp[b][j]
                top = []
                if r.top_logprobs:
                    vals, idxs = row.topk(r.top_logprobs)
                    top = [(tok.decode([int(k)]), float(v)) for v, k in zip(vals, idxs)]
                lps.append(TokenLogprob(tok.decode([ids[j]]), float(row[ids[j]]), top))
        results.append(GenResult(text=text, finish_reason=reason, prompt_tokens=prompt_lens[b], completion_tokens=n,
                                 logprobs=lps, latency_s=latency / len(reqs)))
    return results


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
