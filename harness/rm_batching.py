"""Reward-model scoring that scales: candidates of many prompts in one queue, length buckets, a token budget.

The JANUS reference scores one prompt's candidates at a time in batches of 8, so every batch is padded to
its longest candidate and small prompts leave the model idle. Here all candidates are tokenised first,
sorted by length, and cut into batches whose padded size (rows x longest row) stays under a token budget:
short candidates go many to a batch, long ones few, and padding nearly vanishes.

Padding goes on the side the model was built for: value-head (OpenRLHF / JANUS-RM) models read positions
from the attention mask and are scored left-padded as JANUS does; sequence-classification models (TRL)
use default positions, so they are right-padded and pooled at the last non-pad token. Rows do not interact,
so the result equals one-at-a-time scoring (to float rounding; the tests check 1e-4).
"""
from __future__ import annotations

from typing import Sequence

from trainer.reward_model import VALUE_HEAD, RewardScorer

DEFAULT_MAX_TOKENS = 16384  # padded tokens per forward pass
DEFAULT_MAX_BATCH = 64


def plan_batches(lengths: Sequence[int], max_tokens: int = DEFAULT_MAX_TOKENS,
                 max_batch: int = DEFAULT_MAX_BATCH) -> list[list[int]]:
    """Indices grouped into batches of similar length with rows x longest <= max_tokens.

    Longest first, so a budget that does not fit memory fails on the first batch, not the last.
    A single sequence longer than the budget still gets a batch of its own.
    """
    if max_tokens < 1 or max_batch < 1:
        raise ValueError(f"scorer batching: max_tokens and max_batch must be >= 1, got {max_tokens}, {max_batch}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted descending: the first row of a batch is its longest
        width = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool):
    """(input_ids, attention_mask) long tensors, padded on the left or the right."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[row, span] = torch.as_tensor(list(s), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def pads_left(scorer: RewardScorer) -> bool:
    return scorer.kind == VALUE_HEAD


def forward_rewards(scorer: RewardScorer, ids, mask) -> list[float]:
    """One forward pass of the scorer's model on a padded batch -> one float per row."""
    import torch

    with torch.no_grad():
        ids, mask = ids.to(scorer.device), mask.to(scorer.device)
        if scorer.kind == VALUE_HEAD:
            rewards = scorer.model(ids, mask)
        else:
            rewards = scorer.model(input_ids=ids, attention_mask=mask).logits[:, 0]
    return [float(r) for r in rewards.float().tolist()]


def _ensure_pad_token(scorer: RewardScorer) -> None:
    # HF sequence classifiers find the last real token through config.pad_token_id; without it they
    # refuse batches larger than one. TRL sets it the same way when it trains.
    config = getattr(scorer.model, "config", None)
    if scorer.kind != VALUE_HEAD and config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = scorer.pad_id


class BucketedScorer:
    """Scores (system, prompt, response) triples with a ``trainer.reward_model.RewardScorer``."""

    def __init__(self, scorer: RewardScorer, max_tokens: int = DEFAULT_MAX_TOKENS,
                 max_batch: int = DEFAULT_MAX_BATCH):
        self.scorer = scorer
        self.max_tokens, self.max_batch = int(max_tokens), int(max_batch)
        self.name, self.version = scorer.name, scorer.version
        _ensure_pad_token(scorer)

    def encode(self, triples: Sequence[tuple]) -> list[list[int]]:
        return [self.scorer.encode(*t) for t in triples]

    def score_ids(self, seqs: Sequence[Sequence[int]], on_batch=None) -> list[float]:
        """Rewards for token sequences. ``on_batch(indices, rewards)`` is called after every batch,
        so a caller can store finished work before the next batch runs."""
        out: list[float] = [0.0] * len(seqs)
        left = pads_left(self.scorer)
        for idx in plan_batches([len(s) for s in seqs], self.max_tokens, self.max_batch):
            ids, mask = pad_batch([seqs[i] for i in idx], self.scorer.pad_id, left)
            rewards = forward_rewards(self.scorer, ids, mask)
            for i, r in zip(idx, rewards):
                out[i] = r
            if on_batch is not None:
                on_batch(idx, rewards)
        return out

    def score(self, triples: Sequence[tuple], on_batch=None) -> list[float]:
        return self.score_ids(self.encode(triples), on_batch)


def score_one_at_a_time(scorer: RewardScorer, triples: Sequence[tuple]) -> list[float]:
    """No padding at all: the ground truth the batched scorer must match."""
    out = []
    for t in triples:
        ids, mask = pad_batch([scorer.encode(*t)], scorer.pad_id, pads_left(scorer))
        out.append(forward_rewards(scorer, ids, mask)[0])
    return out


def score_per_prompt(scorer: RewardScorer, groups: Sequence[Sequence[tuple]], batch_size: int = 8) -> list[list[float]]:
    """The JANUS reference approach (``run_inference.py``): each prompt's candidates in input order,
    ``batch_size`` at a time, left-padded for value-head models. Kept for the speed comparison."""
    _ensure_pad_token(scorer)
    left = pads_left(scorer)
    out = []
    for triples in groups:
        seqs = [scorer.encode(*t) for t in triples]
        rewards: list[float] = []
        for start in range(0, len(seqs), batch_size):
            ids, mask = pad_batch(seqs[start:start + batch_size], scorer.pad_id, left)
            rewards.extend(forward_rewards(scorer, ids, mask))
        out.append(rewards)
    return out
