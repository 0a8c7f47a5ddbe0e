"""Reward-model scoring that scales: candidates of many prompts in one queue, length buckets, a token budget.

The JANUS reference scores one prompt's candidates at a time in batches of 8, so every batch is padded to
its longest candidate and small prompts leave the model idle. Here all candidates are tokenised first,
sorted by length, and cut into batches whose padded size (rows x longest row) stays under a token budget:
short candidates go many to a batch, long ones few, and padding nearly vanishes.

Padding goes on the side the model was built for: value-head (OpenRLHF / JANUS-RM) models read positions
from the attention mask and are scored left-padded as JANUS does; sequence-classification models (TRL)
use default positions, so they are right-padded and pooled at the last non-pad token. Rows do not interact,
so the result equals one-at-a-time scoring (to float rounding; the tests check 1e-4).

The cost model differs by device. On an accelerator, rows in a batch run in parallel, so the budget fills
batches and sorted lengths keep the padding small. On a CPU a padded token costs as much as a real one and
a batch is no faster per row than single rows, while a padded batch's 4-d attention mask forces the slow
attention path; so on CPU only rows of equal length share a batch (``pad_tolerance`` 0), batches without
padding run without a mask (the causal fast path), and batches run side by side, one per core that torch's
own threads leave free (two threads of batches on two cores: 1.97x one; torch's two threads in one batch:
1.81x). (Running a prompt's shared prefix once and continuing
each candidate from its key/value cache was measured slower on CPU: attention over a cache needs an explicit
mask again.)
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Sequence

from harness.backends.reward_model import VALUE_HEAD, RewardScorer

DEFAULT_MAX_TOKENS = 16384  # padded tokens per forward pass
DEFAULT_MAX_BATCH = 64


def plan_batches(lengths: Sequence[int], max_tokens: int = DEFAULT_MAX_TOKENS,
                 max_batch: int = DEFAULT_MAX_BATCH, pad_tolerance: float = 1.0) -> list[list[int]]:
    """Indices grouped into batches of similar length with rows x longest <= max_tokens.

    A row joins a batch only if its padding is at most ``pad_tolerance`` x the batch width (1.0: any;
    0.0: equal lengths only). Longest first, so a budget that does not fit memory fails on the first batch,
    not the last. A single sequence longer than the budget still gets a batch of its own.
    """
    if max_tokens < 1 or max_batch < 1:
        raise ValueError(f"scorer batching: max_tokens and max_batch must be >= 1, got {max_tokens}, {max_batch}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted descending: the first row of a batch is its longest
        width = lengths[current[0]] if current else lengths[i]
        full = (len(current) + 1) * width > max_tokens or len(current) >= max_batch
        if current and (full or width - lengths[i] > pad_tolerance * width):
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


def forward_rewards(scorer: RewardScorer, ids, mask, unpadded_fast_path: bool = True) -> list[float]:
    """One forward pass of the scorer's model on a padded batch -> one float per row.

    A batch without padding is run without an attention mask: the model then takes its causal fast path
    (on CPU a padded batch's explicit 4-d mask costs up to half the time). Positions are the same
    (0..L-1 = cumsum(mask) - 1), so is the reward.
    """
    import torch

    padded = not bool(mask.all())
    with torch.no_grad():
        ids, mask = ids.to(scorer.device), mask.to(scorer.device)
        if scorer.kind == VALUE_HEAD:
            if padded or not unpadded_fast_path:
                rewards = scorer.model(ids, mask)
            else:
                rewards = _value_head_unpadded(scorer.model, ids)
        else:
            use_mask = padded or not unpadded_fast_path
            rewards = scorer.model(input_ids=ids, attention_mask=mask if use_mask else None).logits[:, 0]
    return [float(r) for r in rewards.float().tolist()]


def _value_head_unpadded(model, ids):
    """The value-head reward (``harness.backends.reward_model``) of rows without padding: the value at the last token."""
    hidden = model.base(input_ids=ids).last_hidden_state[:, -1]
    reward = model.value_head(hidden).squeeze(-1)
    if model.normalize:
        reward = (reward - model.mean) / model.std
    return reward


def default_pad_tolerance(device: str) -> float:
    """CPU: a padded row costs as much compute as a real one and batching buys nothing, so only rows of equal
    length share a batch. Accelerators: batching is what makes them fast; sorted buckets keep padding small."""
    return 0.0 if str(device).startswith("cpu") else 1.0


def default_workers(device: str) -> int:
    """Batches run at once: on CPU one per core that torch's intra-op threads leave free (none when torch
    uses every core already); on an accelerator one (its batches queue on the device anyway)."""
    if not str(device).startswith("cpu"):
        return 1
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, torch.get_num_threads()))


def _ensure_pad_token(scorer: RewardScorer) -> None:
    # HF sequence classifiers find the last real token through config.pad_token_id; without it they
    # refuse batches larger than one. TRL sets it the same way when it trains.
    config = getattr(scorer.model, "config", None)
    if scorer.kind != VALUE_HEAD and config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = scorer.pad_id


class BucketedScorer:
    """Scores (system, prompt, response) triples with a ``harness.backends.reward_model.RewardScorer``."""

    def __init__(self, scorer: RewardScorer, max_tokens: int = DEFAULT_MAX_TOKENS,
                 max_batch: int = DEFAULT_MAX_BATCH, pad_tolerance: float | None = None, workers: int | None = None):
        self.scorer = scorer
        self.max_tokens, self.max_batch = int(max_tokens), int(max_batch)
        self.pad_tolerance = default_pad_tolerance(scorer.device) if pad_tolerance is None else float(pad_tolerance)
        self.workers = default_workers(scorer.device) if workers is None else int(workers)
        self.name, self.version = scorer.name, scorer.version
        _ensure_pad_token(scorer)

    def encode(self, triples: Sequence[tuple]) -> list[list[int]]:
        return [self.scorer.encode(*t) for t in triples]

    def score_ids(self, seqs: Sequence[Sequence[int]], on_batch=None) -> list[float]:
        """Rewards for token sequences. ``on_batch(indices, rewards)`` is called after every batch,
        in this thread, so a caller can store finished work while the next batches run (``workers`` at once;
        a row's reward does not depend on which thread ran it)."""
        out: list[float] = [0.0] * len(seqs)
        left = pads_left(self.scorer)

        def run(idx):
            ids, mask = pad_batch([seqs[i] for i in idx], self.scorer.pad_id, left)
            return idx, forward_rewards(self.scorer, ids, mask)

        def done(idx, rewards):
            for i, r in zip(idx, rewards):
                out[i] = r
            if on_batch is not None:
                on_batch(idx, rewards)

        todo = plan_batches([len(s) for s in seqs], self.max_tokens, self.max_batch, self.pad_tolerance)
        if self.workers <= 1 or len(todo) <= 1:
            for idx in todo:
                done(*run(idx))
            return out
        with ThreadPoolExecutor(self.workers, thread_name_prefix="reward") as pool:
            running = set()  # at most `workers` batches in flight: an error submits no more
            for idx in todo:
                if len(running) == self.workers:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        done(*f.result())
                running.add(pool.submit(run, idx))
            for f in wait(running).done:
                done(*f.result())
        return out

    def score(self, triples: Sequence[tuple], on_batch=None) -> list[float]:
        return self.score_ids(self.encode(triples), on_batch)


def score_one_at_a_time(scorer: RewardScorer, triples: Sequence[tuple]) -> list[float]:
    """No padding, the model's own forward with its mask: the ground truth the batched scorer must match."""
    out = []
    for t in triples:
        ids, mask = pad_batch([scorer.encode(*t)], scorer.pad_id, pads_left(scorer))
        out.append(forward_rewards(scorer, ids, mask, unpadded_fast_path=False)[0])
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
            rewards.extend(forward_rewards(scorer, ids, mask, unpadded_fast_path=False))
        out.append(rewards)
    return out
