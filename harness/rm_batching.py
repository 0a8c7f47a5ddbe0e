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
padding run without a mask (the causal fast path), and the candidates of one prompt run their shared prefix
(system message and prompt) once, each continuing from a copy of its key/value cache.
"""
from __future__ import annotations

from typing import Sequence

from trainer.reward_model import VALUE_HEAD, RewardScorer

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
    """The value-head reward (``trainer.reward_model``) of rows without padding: the value at the last token."""
    hidden = model.base(input_ids=ids).last_hidden_state[:, -1]
    reward = model.value_head(hidden).squeeze(-1)
    if model.normalize:
        reward = (reward - model.mean) / model.std
    return reward


def default_pad_tolerance(device: str) -> float:
    """CPU: a padded row costs as much compute as a real one and batching buys nothing, so only rows of equal
    length share a batch. Accelerators: batching is what makes them fast; sorted buckets keep padding small."""
    return 0.0 if str(device).startswith("cpu") else 1.0


def _ensure_pad_token(scorer: RewardScorer) -> None:
    # HF sequence classifiers find the last real token through config.pad_token_id; without it they
    # refuse batches larger than one. TRL sets it the same way when it trains.
    config = getattr(scorer.model, "config", None)
    if scorer.kind != VALUE_HEAD and config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = scorer.pad_id


MIN_SHARED_PREFIX = 8  # tokens; below this a prefix pass costs more than it saves


def shared_prefix_length(seqs: Sequence[Sequence[int]], pad_id: int | None = None) -> int:
    """Length of the token prefix common to all ``seqs``, leaving every sequence at least one token of its own.

    With ``pad_id`` (sequence classifiers pool at the last non-pad token) the prefix also stops before each
    sequence's last non-pad token, so the pooled token is always in the part run per candidate.
    """
    limit = min(len(s) for s in seqs) - 1
    if pad_id is not None:
        for s in seqs:
            last = max((i for i, t in enumerate(s) if t != pad_id), default=0)
            limit = min(limit, last)
    n = 0
    first = seqs[0]
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def _runs_with_cache(module) -> str:
    """transformers 5.x names the key/value cache argument ``cache``; earlier versions ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _prefix_cache(scorer: RewardScorer, prefix_ids):
    module = scorer.model.base if scorer.kind == VALUE_HEAD else scorer.model
    out = module(input_ids=prefix_ids, use_cache=True)
    return out["cache"] if "cache" in out else out["past_key_values"]


def score_with_shared_prefix(scorer: RewardScorer, seqs: Sequence[Sequence[int]], prefix_len: int) -> list[float]:
    """Rewards of candidates that share their first ``prefix_len`` tokens (the rendered system message and
    prompt): the prefix runs once, each candidate runs only its own tokens on a copy of the prefix's
    key/value cache. Positions continue from the prefix, so the result equals the full forward pass."""
    import copy

    import torch

    out = []
    with torch.no_grad():
        prefix = torch.tensor([list(seqs[0][:prefix_len])], dtype=torch.long, device=scorer.device)
        cache = _prefix_cache(scorer, prefix)
        module = scorer.model.base if scorer.kind == VALUE_HEAD else scorer.model
        cache_arg = _runs_with_cache(module)
        for s in seqs:
            suffix = torch.tensor([list(s[prefix_len:])], dtype=torch.long, device=scorer.device)
            past = copy.deepcopy(cache)  # the forward appends to the cache it is given
            if scorer.kind == VALUE_HEAD:
                model = scorer.model
                hidden = model.base(input_ids=suffix, use_cache=True, **{cache_arg: past}).last_hidden_state[:, -1]
                reward = model.value_head(hidden).squeeze(-1)
                if model.normalize:
                    reward = (reward - model.mean) / model.std
            else:
                reward = scorer.model(input_ids=suffix, use_cache=True, **{cache_arg: past}).logits[:, 0]
            out.append(float(reward.float()[0]))
    return out


class BucketedScorer:
    """Scores (system, prompt, response) triples with a ``trainer.reward_model.RewardScorer``.

    ``share_prefix`` (default: on CPU, where rows run one at a time anyway): candidates of the same prompt
    run their common prefix once (``score_with_shared_prefix``); everything else goes through the buckets.
    """

    def __init__(self, scorer: RewardScorer, max_tokens: int = DEFAULT_MAX_TOKENS,
                 max_batch: int = DEFAULT_MAX_BATCH, pad_tolerance: float | None = None,
                 share_prefix: bool | None = None):
        self.scorer = scorer
        self.max_tokens, self.max_batch = int(max_tokens), int(max_batch)
        self.pad_tolerance = default_pad_tolerance(scorer.device) if pad_tolerance is None else float(pad_tolerance)
        self.share_prefix = (self.pad_tolerance == 0.0) if share_prefix is None else bool(share_prefix)
        self.name, self.version = scorer.name, scorer.version
        _ensure_pad_token(scorer)

    def encode(self, triples: Sequence[tuple]) -> list[list[int]]:
        return [self.scorer.encode(*t) for t in triples]

    def score_ids(self, seqs: Sequence[Sequence[int]], on_batch=None,
                  groups: Sequence[Sequence[int]] | None = None) -> list[float]:
        """Rewards for token sequences. ``groups``: indices of candidates of one prompt (for prefix sharing).
        ``on_batch(indices, rewards)`` is called after every batch or group, so a caller can store finished
        work before the next one runs."""
        out: list[float] = [0.0] * len(seqs)

        def done(idx, rewards):
            for i, r in zip(idx, rewards):
                out[i] = r
            if on_batch is not None:
                on_batch(list(idx), rewards)

        rest = list(range(len(seqs)))
        if self.share_prefix and groups:
            pad = None if self.scorer.kind == VALUE_HEAD else self.scorer.pad_id
            shared = set()
            for idx in groups:
                if len(idx) < 2:
                    continue
                n = shared_prefix_length([seqs[i] for i in idx], pad)
                if n >= MIN_SHARED_PREFIX:
                    done(idx, score_with_shared_prefix(self.scorer, [seqs[i] for i in idx], n))
                    shared.update(idx)
            rest = [i for i in rest if i not in shared]
        left = pads_left(self.scorer)
        for b in plan_batches([len(seqs[i]) for i in rest], self.max_tokens, self.max_batch, self.pad_tolerance):
            idx = [rest[j] for j in b]
            ids, mask = pad_batch([seqs[i] for i in idx], self.scorer.pad_id, left)
            done(idx, forward_rewards(self.scorer, ids, mask))
        return out

    def score(self, triples: Sequence[tuple], on_batch=None) -> list[float]:
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(triples):
            groups.setdefault((t[0], t[1]), []).append(i)
        return self.score_ids(self.encode(triples), on_batch, list(groups.values()))


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
