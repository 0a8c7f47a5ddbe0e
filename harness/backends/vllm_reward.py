"""Reward-model scoring on vLLM's pooling runner: the same token ids as the ``hf`` scorer, vLLM's scheduler.

Both checkpoint layouts of ``harness.backends.reward_model`` run as vLLM sequence classifiers
(``LLM(runner="pooling")``, ``LLM.classify`` with ``use_activation=False``: the raw score, not a sigmoid):

``sequence_classification``
    loaded as is (``*ForSequenceClassification`` with one label, pooled at the last token, which is where
    the ``hf`` scorer reads it: sequences go in unpadded).

``value_head``
    a JANUS-RM / OpenRLHF checkpoint is a sequence classifier in all but names: its bias-free
    ``value_head`` is the classifier's ``score`` Linear, read at the last token. vLLM refuses the unknown
    weight name, so a view of the checkpoint is written once under ``~/.cache/harness/vllm-rm/<fingerprint>``:
    a config saying ``<Base>ForSequenceClassification`` with one label, the shard that holds the head
    rewritten with it renamed, every other file a symlink. Normalisation ``(r - mean) / std`` is applied here,
    as the ``hf`` scorer applies it.

Token ids come from the ``hf`` scorer's encoder (``RewardScorer.encode``: the model's prompt format, the
truncation to ``max_length``), so both engines read exactly the same input; rewards agree to float rounding
(the tests check 1e-3 in float32). vLLM's engine core runs in a spawned process: scripts need an
``if __name__ == "__main__":`` guard.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Sequence

from harness.backends.reward_model import VALUE_HEAD, RewardScorer, _weight_files, detect_kind

#: candidates per ``LLM.classify`` call: the engine schedules within a call; between calls the scores are stored
CHUNK = 512


def vllm_view_dir(path: Path, cache_root: Path | None = None) -> Path:
    """A directory vLLM loads as a one-label sequence classifier: ``path`` itself unless it is a
    value-head checkpoint, else its renamed view (written once, atomically)."""
    from harness.scorers import file_fingerprint

    path = Path(path)
    if detect_kind(path) != VALUE_HEAD:
        return path
    root = cache_root or Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")) / "vllm-rm"
    view = root / f"{path.name}-{file_fingerprint(path)}"
    if (view / ".complete").exists():
        return view
    tmp = view.with_name(view.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    arch = (config.get("architectures") or [f"{config.get('model_type', 'llama').capitalize()}ForCausalLM"])[0]
    base = arch.removesuffix("ForCausalLM").removesuffix("Model").removesuffix("ForSequenceRegression")
    config.update(architectures=[f"{base}ForSequenceClassification"], num_labels=1,
                  id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    shards = {f.name for f in _weight_files(path)}
    for f in path.iterdir():
        if f.name == "config.json" or not f.is_file():
            continue
        if f.name in shards and f.suffix == ".safetensors" and _has_tensor(f, "value_head.weight"):
            _rename_tensor(f, tmp / f.name, "value_head.weight", "score.weight")
        elif f.name.endswith(".index.json"):
            index = json.loads(f.read_text())
            wm = index.get("weight_map", {})
            if "value_head.weight" in wm:
                wm["score.weight"] = wm.pop("value_head.weight")
            (tmp / f.name).write_text(json.dumps(index, indent=2))
        elif f.suffix == ".bin":
            raise ValueError(f"{path}: the vllm reward engine reads safetensors checkpoints; {f.name} is a "
                             "pickle-format shard (convert it, or use engine 'hf')")
        else:
            (tmp / f.name).symlink_to(f.resolve())
    (tmp / ".complete").write_text("")
    if view.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp)
        return view
    tmp.rename(view)
    return view


def _has_tensor(f: Path, name: str) -> bool:
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as sf:
        return name in sf.keys()


def _rename_tensor(src: Path, dst: Path, old: str, new: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as sf:
        metadata = sf.metadata() or {"format": "pt"}
        tensors = {(new if k == old else k): sf.get_tensor(k) for k in sf.keys()}
    save_file(tensors, str(dst), metadata=metadata)


class VLLMRewardEngine:
    """``score(triples, on_batch)`` like ``rm_batching.BucketedScorer``, with vLLM doing the forward passes."""

    def __init__(self, scorer: RewardScorer, path: Path, dtype: str = "float32", engine_args: dict | None = None):
        self.scorer = scorer  # its tokenizer and format encode; its model is not loaded (None)
        self.path = Path(path)
        # the hf scorer's truncation length bounds every sequence; engine_args may say otherwise
        self.engine_kwargs = {"dtype": dtype, "max_model_len": scorer.max_length, **(engine_args or {})}
        # load_reward_model resolved whether a value-head model normalises (it checked mean/std exist)
        self.normalize = bool(scorer.normalize)
        self.mean = self.std = None
        if self.normalize:
            config = json.loads((self.path / "config.json").read_text())
            self.mean, self.std = float(config["mean"]), float(config["std"])
        self.name, self.version = scorer.name, scorer.version
        self._llm = None
        self._lock = threading.Lock()

    def load(self):
        with self._lock:
            if self._llm is None:
                from harness.backends.vllm_backend import vllm_llm_class

                llm_class = vllm_llm_class("reward engine 'vllm'")
                self._llm = llm_class(model=str(vllm_view_dir(self.path)), runner="pooling", **self.engine_kwargs)
        return self._llm

    def encode(self, triples: Sequence[tuple]) -> list[list[int]]:
        return [self.scorer.encode(*t) for t in triples]

    def score_ids(self, seqs: Sequence[Sequence[int]], on_batch=None) -> list[float]:
        llm = self.load()
        from vllm import PoolingParams

        out: list[float] = []
        for start in range(0, len(seqs), CHUNK):
            idx = list(range(start, min(start + CHUNK, len(seqs))))
            res = llm.classify([{"prompt_token_ids": list(seqs[i])} for i in idx],
                               pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
            rewards = [float(r.outputs.probs[0]) for r in res]
            if self.normalize:
                rewards = [(r - self.mean) / self.std for r in rewards]
            out.extend(rewards)
            if on_batch is not None:
                on_batch(idx, rewards)
        return out

    def score(self, triples: Sequence[tuple], on_batch=None) -> list[float]:
        return self.score_ids(self.encode(triples), on_batch)

    def close(self) -> None:
        self._llm = None
