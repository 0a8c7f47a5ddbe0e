"""MT-Bench single-answer grading with FastChat's judge prompts (``judge_prompts.jsonl``).

Turn 1 uses ``single-v1`` (``single-math-v1`` with the reference answer for math,
reasoning and coding); turn 2 uses the ``-multi-turn`` prompts, which show the whole
two-turn conversation. The rating is read as FastChat does: the first ``[[x]]``,
else the first ``[x]``, parsed as a number, no clamping; anything else is a failure
(FastChat's score -1).
"""
from __future__ import annotations

import ast
import json
import re
from functools import lru_cache
from pathlib import Path

from harness.records import Completion, Instance
from judges.base import Judge, JudgeCall, Parsed

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
SCORE_TOKENS = [str(i) for i in range(1, 11)]


@lru_cache(maxsize=4)
def load_judge_prompts(path: str) -> dict[str, dict]:
    prompts = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            prompts[d["name"]] = d
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path}:{n}: bad judge prompt line ({e})") from None
    for name in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"):
        if name not in prompts:
            raise ValueError(f"{path}: judge prompt '{name}' missing")
    return prompts


def parse_rating(text: str, official: bool = False) -> Parsed:
    """FastChat ``run_judge_single`` semantics. FastChat counts any number it finds (``[[42]]``
    is a 42); by default a rating outside 1-10 is a parse failure, ``official`` keeps FastChat's."""
    m = ONE_SCORE.search(text) or ONE_SCORE_BACKUP.search(text)
    if not m:
        return Parsed(-1, False, "no [[rating]] found")
    try:
        value = ast.literal_eval(m.groups()[0])
    except (ValueError, SyntaxError):
        return Parsed(-1, False, f"unparsable rating {m.group(0)!r}")
    if not official and not 1 <= value <= 10:
        return Parsed(-1, False, f"rating {value} is outside 1-10")
    return Parsed(value, True)


class MTBenchSingleJudge(Judge):
    name = "mt_bench_single"
    version = "fastchat-0e6d3e4"

    def __init__(self, options: dict | None = None, data_dir=None):
        super().__init__(options, data_dir)
        self.prompts_path = self.options.get("judge_prompts")
        # "official": count any rating FastChat would (``[[42]]`` included)
        if self.options.get("parser", "default") not in ("default", "official"):
            raise ValueError(f"judge {self.name}: option 'parser' must be 'default' or 'official'")

    def config(self) -> dict:
        cfg = super().config()
        if self.prompts_path:
            cfg["judge_prompts_sha"] = _sha(self.prompts_path)
        return cfg

    def prompts(self, context_path: str | None = None) -> dict[str, dict]:
        return load_judge_prompts(self.prompts_path or context_path)

    def calls(self, instance: Instance, completion: Completion, **context) -> list[JudgeCall]:
        prompts = self.prompts(instance.metadata.get("judge_prompts"))
        ref = instance.category in NEED_REF_CATS and instance.reference
        out = []
        turns = min(len(instance.turns), len(completion.texts))
        for t in range(1, turns + 1):
            name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if t == 2 else "")
            p = prompts[name]
            kw = {}
            if t == 1:
                kw.update(question=instance.turns[0], answer=completion.texts[0])
                if ref:
                    kw["ref_answer_1"] = instance.reference[0]
            else:
                kw.update(question_1=instance.turns[0], question_2=instance.turns[1],
                          answer_1=completion.texts[0], answer_2=completion.texts[1])
                if ref:
                    kw.update(ref_answer_1=instance.reference[0], ref_answer_2=instance.reference[1])
            messages = [{"role": "system", "content": p["system_prompt"]},
                        {"role": "user", "content": p["prompt_template"].format(**kw)}]
            call = JudgeCall(criterion=f"turn{t}", messages=messages, max_tokens=2048, temperature=0.0,
                             meta={"judge_prompt": name})
            if self.method == "logprob":
                call.logprob_prefix, call.allowed = "Rating: [[", SCORE_TOKENS
            out.append(call)
        return out

    def parse(self, text: str, call: JudgeCall) -> Parsed:
        return parse_rating(text, official=self.options.get("parser") == "official")


def _sha(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
