"""One-token greedy requests (logprob judges) that share a prompt prefix: the prefix runs once.

A Multifaceted Bench judge asks about one answer once per rubric, and the JANUS prompt puts the
rubric last: the rubric prompts of one answer share everything up to the rubric. Here the
requests of a batch are grouped by common token prefix; each group's prefix is run once (or
taken from a small LRU of prefix caches, keyed by the prefix token ids, when an answer's
rubric prompts span two batches), then the suffixes run as one batch over the prefix's keys
and values, expanded over the batch.

Same math as the unshared path: suffixes are padded between the prefix and their own tokens
(masked), each real token keeps the position it has in the full prompt, and the logits of
the last prompt token give the one generated token and its logprobs
(tests/test_prefix_judging.py compares with ``generate`` within 1e-5).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from harness.backends.base import GenRequest, GenResult
from harness.backends.hf_batching import cache_kw, check_filled, finish, prompt_ids, stop_ids

#: a prefix shorter than this is not worth a separate forward pass
MIN_SHARED = 32


class PrefixCache:
    """Per-layer (key, value) tensors of recent prefixes (batch 1), least recently used out first."""

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: OrderedDict[tuple[int, ...], list] = OrderedDict()
        self.hits = self.misses = 0
        self.lock = threading.Lock()  # batches may run at once (call-layer concurrency, serve --workers)

    def longest(self, ids: list[int], limit: int) -> tuple[int, ...] | None:
        """The longest stored prefix of ``ids`` no longer than ``limit``."""
        best = None
        for key in self.entries:
            if len(key) <= limit and (best is None or len(key) > len(best)) and tuple(ids[:len(key)]) == key:
                best = key
        return best

    def put(self, key: tuple[int, ...], kv: list) -> None:
        self.entries[key] = kv
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def full_attention(model) -> bool:
    """Every layer attends to the whole prompt (a sliding window or a recurrent state would need
    its own cache layers), so a prefix's keys and values serve every prompt that starts with it."""
    cfg = model.config.get_text_config(decoder=True)
    return getattr(cfg, "sliding_window", None) is None and all(
        t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"]))


def eligible(model, reqs: list[GenRequest]) -> bool:
    """One-token requests without a JSON schema (no grammar here) on a model with full attention."""
    return full_attention(model) and all(r.max_tokens == 1 and r.json_schema is None for r in reqs)


def expanded(kv: list, b: int) -> list:
    """A prefix's per-layer (keys, values) of batch 1 as views over ``b`` rows (no copy)."""
    return [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv]


def batch_prefix(rows: list[list[int]], min_shared: int = MIN_SHARED) -> int:
    """Length of the prefix every row shares, leaving each row a token of its own; 0 when shorter
    than ``min_shared`` (not worth its own forward pass)."""
    n = min(len(r) for r in rows) - 1
    for r in rows[1:]:
        n = _common(rows[0], r, n)
    return n if n >= min_shared else 0


def groups(rows: list[list[int]], min_shared: int = MIN_SHARED) -> list[tuple[int, list[int], int]]:
    """(prefix length, row indices, row holding the prefix) groups, in an order where a prefix
    may extend an earlier one (the rubric prompts of one answer under the prefix every answer of
    a batch shares; a group with no rows only computes such a prefix). A prefix leaves each row
    at least one token of its own; 0 means no shared prefix."""
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    lcp = [_common(rows[a], rows[b], len(rows[a])) for a, b in zip(order, order[1:])]
    plan = _plan(rows, order, lcp, 0, min_shared)[1]
    # the rows that share nothing run together, as one left-padded batch
    alone = [i for n, m, _ in plan if n == 0 for i in m]
    return [g for g in plan if g[0] > 0] + ([(0, alone, alone[0])] if alone else [])


def _plan(rows, seg: list[int], lcp: list[int], base: int, min_shared: int) -> tuple[int, list]:
    """(tokens computed, groups) for the sorted rows ``seg`` (``lcp``: their adjacent common prefix
    lengths) whose first ``base`` tokens are computed already."""
    width = max(len(rows[i]) for i in seg)
    if len(seg) == 1:
        return width - base, [(base, seg, seg[0])]
    shortest = min(lcp)
    p = min(shortest, min(len(rows[i]) for i in seg) - 1)
    if p - base < min_shared:  # not worth its own forward pass: one batch from base
        p = base
    flat = (p - base + len(seg) * (width - p), [(p, seg, seg[0])])
    # or split where the common prefix is shortest, each part extending prefix p
    cuts = [j + 1 for j, x in enumerate(lcp) if x == shortest]
    cost, out, single = p - base, ([(p, [], seg[0])] if p > base else []), []
    for lo, hi in zip([0] + cuts, cuts + [len(seg)]):
        if hi - lo == 1:  # shares nothing more with the others: batched together below
            single.append(seg[lo])
            continue
        c, g = _plan(rows, seg[lo:hi], lcp[lo:hi - 1], p, min_shared)
        cost, out = cost + c, out + g
    if single:
        cost += len(single) * (max(len(rows[i]) for i in single) - p)
        out.append((p, single, single[0]))
    return (cost, out) if cost < flat[0] else flat


def one_token(backend, cache: PrefixCache, reqs: list[GenRequest]) -> list[GenResult]:
    import torch
    from transformers import DynamicCache

    model, tok = backend.load()
    t0 = time.perf_counter()
    rows = prompt_ids(backend, reqs)
    out_ids: list[list[int]] = [[] for _ in reqs]
    out_lp: list[list] = [[] for _ in reqs]
    plan = groups(rows)
    # a row with nothing to share here may share a prefix stored by an earlier batch (one
    # answer's rubric prompts split over two batches)
    with cache.lock:
        for g, (n, members, src) in enumerate(plan):
            if len(members) == 1:
                key = cache.longest(rows[src], len(rows[src]) - 1)
                if key is not None and len(key) - n >= MIN_SHARED:
                    plan[g] = (len(key), members, src)
    with torch.no_grad():
        for n, members, src in plan:
            kv = prefix_kv(model, cache, rows[src][:n], backend.device) if n else None
            if not members:
                continue
            dc = DynamicCache(expanded(kv, len(members))) if kv else DynamicCache()
            logits = suffix_prefill(model, dc, n, [rows[i][n:] for i in members], tok.pad_token_id,
                                    backend.device)[0]
            lp = logits.log_softmax(-1)
            for j, i in enumerate(members):
                out_ids[i].append(int(logits[j].argmax()))
                out_lp[i].append(lp[j])
    latency = time.perf_counter() - t0
    want_lp = bool(reqs[0].logprobs)
    return finish(tok, stop_ids(model, tok), reqs, out_ids, out_lp if want_lp else None,
                  [len(r) for r in rows], latency)


def prefix_kv(model, cache: PrefixCache, prefix: list[int], device) -> list:
    """Per-layer (key, value) of ``prefix`` (batch 1), from the LRU or computed, extending the
    longest stored prefix of it when there is one. The LRU is touched under its lock, the model
    runs outside it: batches of a server's workers compute their prefixes at once."""
    import torch
    from transformers import DynamicCache

    key = tuple(prefix)
    with cache.lock:
        if key in cache.entries:
            cache.hits += 1
            cache.entries.move_to_end(key)
            return cache.entries[key]
        cache.misses += 1
        base = cache.longest(prefix, len(prefix) - 1)
        if base is not None:
            cache.entries.move_to_end(base)
            base_kv = cache.entries[base]
    start = len(base) if base is not None else 0
    dc = DynamicCache([(k, v) for k, v in base_kv]) if base is not None else DynamicCache()
    ids = torch.tensor([prefix[start:]], dtype=torch.long, device=device)
    pos = torch.arange(start, len(prefix), device=device)[None]
    model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1, **{cache_kw(model): dc})
    check_filled(dc, len(prefix))
    kv = [(layer.keys, layer.values) for layer in dc.layers]
    with cache.lock:
        cache.put(key, kv)
    return kv


def suffix_prefill(model, dc, n: int, suffixes: list[list[int]], pad: int, device):
    """Each ``prefix + suffix`` run over ``dc``, a cache holding the prefix's keys and values for every row
    (empty when ``n`` is 0): [pads][suffix] after the prefix, pads masked, the suffix at positions n, n+1,
    ... as in the whole prompt. Returns (last-token logits, attention mask, positions of the suffix tokens,
    the filled cache), which a decoder continues from."""
    import torch

    b, width = len(suffixes), max(len(s) for s in suffixes)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in suffixes], dtype=torch.long, device=device)
    tail = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], dtype=torch.long, device=device)
    mask = torch.cat([tail.new_ones((b, n)), tail], dim=-1)
    # positions from the mask, as generate derives them (pads get 1)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, n:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{cache_kw(model): dc})
    check_filled(dc, n + width)
    return out.logits[:, -1, :].float(), mask, pos, dc


def _common(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
