"""Personalised reward models as scorers: (system message, prompt, response) -> float, batched.

Two checkpoint layouts load:

``sequence_classification``
    What ``harness train rm`` writes (TRL RewardTrainer): ``AutoModelForSequenceClassification`` with
    one label, read at the last non-pad token. Its card (``harness_card.json``) names the prompt format.

``value_head``
    OpenRLHF / JANUS-RM (``kaist-ai/janus-rm-7b``): the base transformer under its ``base_model_prefix``
    plus ``value_head.weight`` (a Linear to 1, no bias). Positions are ``cumsum(mask) - 1``, the reward is
    the value at the last attended token (EOS), and when the config has ``mean``/``std`` the reward is
    normalised ``(r - mean) / std`` (JANUS scores best-of-n with ``normalize_reward=True``).
    Text: ``"[INST] {system}\\n{prompt} [/INST] " + response + " " + eos`` (JANUS ``run_inference.py``).

A multi-turn answer is scored on the whole conversation in the model's format: the chat template over
every turn and answer, or JANUS's Mistral form ``[INST] {system}\\n{q1} [/INST] a1</s>[INST] q2 [/INST] a2 </s>``
(the JANUS chat template for the earlier turns, the reward text above for the last one).

A reward model is a local directory or a hub id (``kaist-ai/janus-rm-7b``), downloaded into the
Hugging Face cache when online; offline, a hub id not in that cache is a clear error (``resolve_reward_model``).

``trust_remote_code`` is off unless asked. Dropout is off (eval mode), scoring runs under no_grad.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from harness.formats import CHAT, JANUS, PromptFormat, chat_messages, janus_prompt

SEQ_CLS = "sequence_classification"
VALUE_HEAD = "value_head"
KINDS = (SEQ_CLS, VALUE_HEAD)


# ----------------------------------------------------------------------------------------------
# checkpoint inspection
# ----------------------------------------------------------------------------------------------
def _weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return [path / name]
    return []


def _weight_names(path: Path) -> set[str]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            return set(json.loads(index.read_text())["weight_map"])
    names: set[str] = set()
    for f in _weight_files(path):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                names.update(sf.keys())
        else:
            names.update(_load_bin(f).keys())
    return names


def _load_bin(f: Path) -> dict:
    import torch

    # weights_only: never unpickle arbitrary objects from a user-supplied checkpoint
    return torch.load(str(f), map_location="cpu", weights_only=True)


def _read_tensor(path: Path, name: str):
    for f in _weight_files(path):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                if name in sf.keys():
                    return sf.get_tensor(name)
        else:
            state = _load_bin(f)
            if name in state:
                return state[name]
    raise ValueError(f"{path}: weight '{name}' not found in the checkpoint")


def detect_kind(path: str | Path) -> str:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ValueError(f"{path}: not a model directory (no config.json)")
    config = json.loads(cfg_file.read_text())
    if any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return SEQ_CLS
    if "value_head.weight" in _weight_names(path):
        return VALUE_HEAD
    raise ValueError(f"{path}: not a reward model: config.json architectures {config.get('architectures')} "
                     "is not *ForSequenceClassification and the weights have no 'value_head.weight'")


# ----------------------------------------------------------------------------------------------
# the value-head model (OpenRLHF / JANUS-RM layout)
# ----------------------------------------------------------------------------------------------
def _value_head_model_class():
    from torch import nn

    class ValueHeadRewardModel(nn.Module):
        """A base transformer and a bias-free scalar head read at the last attended token."""

        def __init__(self, base, hidden_size: int, mean: float = 0.0, std: float = 1.0, normalize: bool = False):
            super().__init__()
            self.base = base
            self.value_head = nn.Linear(hidden_size, 1, bias=False)
            self.mean, self.std, self.normalize = float(mean), float(std), normalize

        def forward(self, input_ids, attention_mask):
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids = position_ids.masked_fill(attention_mask == 0, 1)
            hidden = self.base(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state
            values = self.value_head(hidden).squeeze(-1)
            last = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
            reward = values.gather(dim=1, index=last).squeeze(1)
            if self.normalize:
                reward = (reward - self.mean) / self.std
            return reward

    return ValueHeadRewardModel


def load_value_head_model(path: str | Path, dtype=None, normalize: bool | None = None,
                          trust_remote_code: bool = False):
    import torch
    from transformers import AutoConfig, AutoModel

    path = Path(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    base = AutoModel.from_pretrained(path, config=config, dtype=dtype or torch.float32,
                                     trust_remote_code=trust_remote_code)
    has_stats = hasattr(config, "mean") and hasattr(config, "std")
    if normalize and not has_stats:
        raise ValueError(f"{path}: normalisation asked for but config.json has no 'mean'/'std'")
    cls = _value_head_model_class()
    model = cls(base, config.hidden_size, getattr(config, "mean", 0.0), getattr(config, "std", 1.0),
                has_stats if normalize is None else normalize)
    head = _read_tensor(path, "value_head.weight")
    if tuple(head.shape) != (1, config.hidden_size):
        raise ValueError(f"{path}: value_head.weight has shape {tuple(head.shape)}, expected (1, {config.hidden_size})")
    with torch.no_grad():
        model.value_head.weight.copy_(head.to(model.value_head.weight.dtype))
    model.value_head.to(next(base.parameters()).dtype)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# the scorer
# ----------------------------------------------------------------------------------------------
class RewardScorer:
    """Scores (system, prompt, response) triples with a loaded reward model."""

    def __init__(self, model, tokenizer, kind: str, prompt_format: str, max_length: int = 2048,
                 device: str = "cpu", name: str = "reward_model", version: str = "",
                 normalize: bool | None = None):
        # model: None when another engine runs the forward passes (``vllm_reward``); this then only encodes
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.normalize = normalize  # value-head checkpoints: whether rewards are (r - mean) / std
        self.format = PromptFormat(prompt_format, tokenizer)
        self.max_length, self.device = max_length, device
        self.name, self.version = name, version
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(self, system: str | None, prompt: str | list[str], response: str | list[str]) -> list[int]:
        """Token ids of one answer (a prompt and a response) or of a conversation (turns and answers)."""
        if isinstance(prompt, str):
            return self.format.reward_ids(system, prompt, response, self.max_length)
        if len(prompt) != len(response) or not prompt:
            raise ValueError(f"reward model: {len(prompt)} turns for {len(response)} answers")
        if len(prompt) == 1:
            return self.format.reward_ids(system, prompt[0], response[0], self.max_length)
        return conversation_reward_ids(self.format, system, prompt, response, self.max_length)

    def _batch(self, seqs: list[list[int]], left: bool):
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            span = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, span] = torch.tensor(s, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def score(self, items: Iterable, batch_size: int = 8) -> list[float]:
        """``items``: (system, prompt, response) tuples or dicts with those keys. Returns one float each."""
        import torch

        triples = [(it["system"], it["prompt"], it["response"]) if isinstance(it, dict) else tuple(it)
                   for it in items]
        seqs = [self.encode(*t) for t in triples]
        # batch similar lengths together: less padding, same results
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = [0.0] * len(seqs)
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                if self.kind == VALUE_HEAD:
                    # left padding, as OpenRLHF/JANUS score; positions come from the mask
                    rewards = self.model(*self._batch([seqs[i] for i in idx], left=True))
                else:
                    # right padding, as TRL's reward collator trains; the model pools the last non-pad token
                    ids, mask = self._batch([seqs[i] for i in idx], left=False)
                    rewards = self.model(input_ids=ids, attention_mask=mask).logits[:, 0]
                for i, r in zip(idx, rewards.float().tolist()):
                    out[i] = float(r)
        return out

    def score_one(self, system: str | None, prompt: str, response: str) -> float:
        return self.score([(system, prompt, response)])[0]


def conversation_reward_ids(fmt: PromptFormat, system: str | None, turns: list[str], answers: list[str],
                            max_length: int | None = None) -> list[int]:
    """A multi-turn conversation as the reward model reads it; the reward is read at its last token."""
    tok = fmt.tokenizer
    if fmt.name == JANUS:
        text = ""
        for k, (turn, answer) in enumerate(zip(turns, answers)):
            text += janus_prompt(system, turn) if k == 0 else f"[INST] {turn.strip()} [/INST]"
            text += " " + answer + (tok.eos_token if k < len(turns) - 1 else " " + tok.eos_token)
        ids = list(tok(text)["input_ids"])
    else:
        msgs = chat_messages(tok, system, turns[0]) + [{"role": "assistant", "content": answers[0]}]
        for turn, answer in zip(turns[1:], answers[1:]):
            msgs += [{"role": "user", "content": turn}, {"role": "assistant", "content": answer}]
        enc = tok.apply_chat_template(msgs, tokenize=True)
        ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
        ids[-1] = tok.eos_token_id  # as single answers: the reward is read at an end token
    return ids


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: what a reward model needs from a hub repository
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]


def resolve_reward_model(spec: str | Path) -> Path:
    """A local directory as is; a hub id (``org/name``) from the Hugging Face cache, downloaded when online."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if not HUB_ID.match(str(spec)):
        raise ValueError(f"'{spec}' is not a model directory or a hub id (org/name), nor 'judge' or "
                         "'toxicity[:NAME]'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(spec), allow_patterns=HUB_FILES))
    except Exception as e:  # offline (HF_HUB_OFFLINE, no network), unknown repo, gated repo
        raise ValueError(f"reward model '{spec}': not in the Hugging Face cache and could not be downloaded "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); download it "
                         f"where there is a network (`hf download {spec}`) or pass a local directory") from None


def load_reward_model(path: str | Path, kind: str = "auto", prompt_format: str | None = None,
                      normalize: bool | None = None, max_length: int = 2048, device: str = "cpu",
                      dtype: str = "float32", trust_remote_code: bool = False, weights: bool = True) -> RewardScorer:
    """Load a reward model directory as a scorer. ``kind``: auto, sequence_classification or value_head.
    ``weights=False``: tokenizer, format and identity only (the vLLM reward engine runs the model)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.checkpoint import read_card, verify_checkpoint

    path = Path(path)
    if not path.exists():
        verify_checkpoint(path)  # an interrupted `harness train rm` into this path says so
        raise ValueError(f"reward model path {path} does not exist")
    verify_checkpoint(path)  # a training output whose save did not finish is refused
    kind = detect_kind(path) if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"unknown reward model kind '{kind}'; known: auto, {', '.join(KINDS)}")
    card = read_card(path) or {}
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    config = json.loads((path / "config.json").read_text())
    model = None
    if kind == VALUE_HEAD:
        has_stats = "mean" in config and "std" in config
        if normalize and not has_stats:
            raise ValueError(f"{path}: normalisation asked for but config.json has no 'mean'/'std'")
        normalize = has_stats if normalize is None else bool(normalize)
        if weights:
            model = load_value_head_model(path, torch_dtype(dtype), normalize, trust_remote_code)
        fmt = prompt_format or JANUS
    else:
        if normalize:
            raise ValueError(f"{path}: normalisation is only defined for value-head (JANUS-RM) checkpoints")
        normalize = None
        if weights:
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype(dtype),
                                                                       trust_remote_code=trust_remote_code).eval()
        fmt = prompt_format or card.get("prompt_format") or (CHAT if getattr(tok, "chat_template", None) else JANUS)
    if model is not None:
        model.to(device)
    version = str(card.get("created") or config.get("_name_or_path", ""))
    return RewardScorer(model, tok, kind, fmt, max_length, device, name=path.name, version=version,
                        normalize=normalize)


def torch_dtype(name: str):
    """A dtype name of the configs (float32, bfloat16, float16) as a torch dtype."""
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name!r}") from None
