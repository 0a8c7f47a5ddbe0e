"""Sampling for the hf backend, one seeded generator per request: a sample does not depend on its batch.

``model.generate`` draws every row of a batch from torch's one global generator, so a row's text depends
on which other requests share its batch, and a resumed run (which has only the missing requests to do)
would draw other samples than an uninterrupted one. Here each request gets its own ``torch.Generator``,
seeded from (seed, sample index, prompt token ids), as the vllm backend seeds its samples.

The per-token math is that of ``generate``'s processors, in its order: repetition penalty (over the
request's prompt and generated tokens; pads are not tokens of the request), temperature, top-p (the
smallest set of most likely tokens whose probability reaches ``top_p``; always at least one), then a draw
from the renormalised distribution. A greedy request with a repetition penalty takes the argmax after
the penalty. ``RowSampler`` serves the dynamic-batch decoder (``hf_batching``) directly and
``generate`` through :meth:`RowSampler.processor` (a logits processor that leaves only the drawn token,
after any grammar processor has masked the tokens a JSON schema forbids).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from harness.backends.base import GenRequest


def row_seed(req: GenRequest, prompt_ids: Sequence[int]) -> int:
    src = f"{req.seed}:{req.sample_index}:{list(prompt_ids)}"
    return int(hashlib.sha256(src.encode()).hexdigest()[:16], 16)


class RowSampler:
    """Picks the next token of each request of a group (one sampling setup) from its own generator."""

    def __init__(self, reqs: list[GenRequest], prompt_ids: list[list[int]]):
        import torch

        r0 = reqs[0]
        self.temperature, self.top_p = float(r0.temperature), float(r0.top_p or 1.0)
        self.penalty = float(r0.repetition_penalty or 1.0)
        self.history = [list(p) for p in prompt_ids]  # the tokens the penalty looks at, per request
        self.gens = []
        for r, ids in zip(reqs, prompt_ids):
            g = torch.Generator()
            g.manual_seed(row_seed(r, ids))
            self.gens.append(g)

    def pick(self, logits, rows: Sequence[int]):
        """Next token ids for ``logits`` (one row per request index in ``rows``), appended to the history."""
        import torch

        out = []
        for j, b in enumerate(rows):
            scores = logits[j].float()
            if self.penalty != 1.0 and self.history[b]:
                idx = torch.tensor(sorted(set(self.history[b])), dtype=torch.long, device=scores.device)
                s = scores[idx]
                scores = scores.clone()
                scores[idx] = torch.where(s < 0, s * self.penalty, s / self.penalty)
            if self.temperature == 0:
                t = int(scores.argmax())
            else:
                scores = scores / self.temperature
                if self.top_p < 1.0:
                    srt, order = scores.sort()  # ascending, as transformers' TopPLogitsWarper
                    cum = srt.softmax(-1).cumsum(-1)
                    drop = cum <= (1 - self.top_p)
                    drop[-1] = False
                    scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
                probs = scores.softmax(-1)
                t = int(torch.multinomial(probs.cpu(), 1, generator=self.gens[b]))
            self.history[b].append(t)
            out.append(t)
        return out

    def processor(self):
        """A ``generate`` logits processor: every row's scores become -inf but at the token drawn here, so
        greedy decoding in ``generate`` emits exactly the drawn tokens."""
        import torch
        from transformers import LogitsProcessor

        sampler = self

        class _Draw(LogitsProcessor):
            def __call__(self, input_ids, scores):
                picked = sampler.pick(scores, range(scores.shape[0]))
                out = torch.full_like(scores, float("-inf"))
                out[torch.arange(scores.shape[0]), torch.tensor(picked, device=scores.device)] = 0.0
                return out

        return _Draw()
