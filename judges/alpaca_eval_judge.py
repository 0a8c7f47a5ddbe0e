"""AlpacaEval 2.0's ``weighted_alpaca_eval_gpt4_turbo`` judge.

Faithful to alpaca_eval 0.6.6:
* the prompt is the official template (``alpaca_eval_clf.txt``, read by path at run time), filled by
  replacing the first occurrence of each ``{placeholder}`` in turn (alpaca_eval's ``make_prompts``),
  then split into chat messages at ``<|im_start|>``/``<|im_end|>`` (``prompt_to_chatml``);
* output order is randomised per instruction exactly like its ``RandomSwitchTwoColumnsProcessor``:
  switched = ``random.Random("is_switched_outputs" + instruction + "0").choices([False, True])[0]``
  (seed 0 of the annotator pool; checked against all published annotations);
* one output token with top-5 logprobs (from ``configs.yaml``), preference = 2 - P(m)/(P(m)+P(M))
  (``logprob_parser``, not binarised), then un-switched as 3 - preference, so that the stored value
  is 1 + P(model preferred) with the baseline as output_1;
* identical outputs are not sent to the judge: their preference is 1.5 (a draw).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from pathlib import Path

from harness.backends.base import GenResult
from harness.data import data_dir as data_root
from harness.records import Completion, Instance
from judges.base import Judge, JudgeCall, Parsed
from reports.alpaca_eval_metrics import preference_from_top_logprobs

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
SWITCH_SEED = 0  # PairwiseAnnotator(seed=0) passes this to its processors


def default_annotator_dir(data_dir=None) -> Path:
    return data_root(data_dir) / "alpaca_eval_2" / "annotator"


def is_switched(instruction: str, seed: int = SWITCH_SEED) -> bool:
    """Whether alpaca_eval shows the model's output first (as ``m``) for this instruction."""
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[0]


def fill_template(template: str, values: dict[str, str]) -> str:
    """alpaca_eval ``make_prompts`` for one example: replace the first occurrence of each placeholder,
    placeholders taken in order of first appearance (so text inside an earlier value can be hit, as upstream)."""
    out = template
    for name in Counter(re.findall(r"{([^ \s]+?)}", template)):
        if name not in values:
            raise ValueError(f"judge template needs the field '{name}'")
        out = out.replace("{" + name + "}", str(values[name]), 1)
    return out


def prompt_to_messages(prompt: str, start: str = "<|im_start|>", end: str = "<|im_end|>") -> list[dict]:
    """alpaca_eval ``prompt_to_chatml``: one message per ``<|im_start|>role\\n...<|im_end|>`` block."""
    prompt = prompt.strip()
    if not (prompt.startswith(start) and prompt.endswith(end)):
        raise ValueError("judge prompt template must start with <|im_start|> and end with <|im_end|>")
    messages = []
    for block in prompt.split(start)[1:]:
        head, _, rest = block.partition("\n")
        role = head.strip()
        content = rest.split(end, 1)[0].strip()
        extra = {}
        if role.startswith("system") and role != "system":
            extra = dict(s.split("=", 1) for s in role.split("system", 1)[-1].split(" ") if s)
            role = "system"
        messages.append({"content": content, "role": role, **extra})
    return messages


class WeightedAlpacaEvalJudge(Judge):
    name = ANNOTATOR
    version = "alpaca_eval-0.6.6"
    method = "logprob"

    def __init__(self, options: dict | None = None, data_dir=None):
        super().__init__(options, data_dir)
        self._config: dict | None = None
        self._template: str | None = None

    # -- configuration, read from the official files at run time
    @property
    def annotator_dir(self) -> Path:
        return Path(self.options.get("annotator_dir") or default_annotator_dir(self.data_dir))

    def annotator_config(self) -> dict:
        if self._config is None:
            import yaml

            path = self.annotator_dir / ANNOTATOR / "configs.yaml"
            if not path.is_file():
                raise FileNotFoundError(f"AlpacaEval judge config not found: {path}")
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(cfg, dict) or ANNOTATOR not in cfg:
                raise ValueError(f"{path}: no '{ANNOTATOR}' entry")
            self._config = cfg[ANNOTATOR]
        return self._config

    def template(self) -> str:
        if self._template is None:
            rel = self.annotator_config().get("prompt_template")
            if not rel:
                raise ValueError(f"{self.annotator_dir / ANNOTATOR / 'configs.yaml'}: field 'prompt_template' missing")
            path = self.annotator_dir / rel
            if not path.is_file():
                raise FileNotFoundError(f"AlpacaEval judge template not found: {path}")
            self._template = path.read_text(encoding="utf-8")
        return self._template

    def config(self) -> dict:
        cfg = self.annotator_config()
        return {**super().config(), "completions_kwargs": cfg.get("completions_kwargs"),
                "completion_parser_kwargs": cfg.get("completion_parser_kwargs"),
                "template_sha": hashlib.sha256(self.template().encode()).hexdigest()[:16]}

    # -- requests
    @staticmethod
    def pair(instance: Instance, completion: Completion) -> tuple[str, str, str]:
        if not instance.reference:
            raise ValueError(f"alpaca_eval instance {instance.id}: no baseline output in reference[0]")
        return instance.turns[0], instance.reference[0], completion.text

    def fixed_preference(self, instance: Instance, completion: Completion) -> float | None:
        """1.5 when both outputs are identical (alpaca_eval never asks the judge then), else None."""
        _, baseline, output = self.pair(instance, completion)
        return 1.5 if baseline == output else None

    def render(self, instruction: str, baseline_output: str, model_output: str) -> tuple[list[dict], bool]:
        switched = is_switched(instruction)
        out1, out2 = (model_output, baseline_output) if switched else (baseline_output, model_output)
        prompt = fill_template(self.template(), {"instruction": instruction, "output_1": out1, "output_2": out2})
        return prompt_to_messages(prompt), switched

    def calls(self, instance: Instance, completion: Completion, **context) -> list[JudgeCall]:
        if self.fixed_preference(instance, completion) is not None:
            return []
        instruction, baseline, output = self.pair(instance, completion)
        messages, switched = self.render(instruction, baseline, output)
        kw = self.annotator_config().get("completions_kwargs", {})
        return [JudgeCall(
            criterion="preference", messages=messages,
            max_tokens=int(kw.get("max_tokens", 1)), temperature=float(kw.get("temperature", 1)),
            baseline=instance.metadata.get("baseline_generator", "gpt4_1106_preview"),
            position="output_1" if switched else "output_2",
            top_logprobs=int(kw.get("top_logprobs", 5)), want_logprobs=True,
            meta={"is_switched_outputs": switched},
        )]

    # -- parsing
    def preference_from_top(self, top: list[tuple[str, float]], switched: bool) -> Parsed:
        kw = self.annotator_config().get("completion_parser_kwargs", {})
        pref = preference_from_top_logprobs(top, kw.get("numerator_token", "m"),
                                            kw.get("denominator_tokens", ["m", "M"]))
        if pref != pref:  # NaN: neither label token among the top logprobs
            return Parsed(None, False, "no label token (m/M) among the top logprobs")
        if kw.get("is_binarize", False):
            pref = 1.0 if pref < 1.5 else 2.0  # binarised parser: 1 if P(m) is highest
        if switched:
            pref = 3 - pref
        return Parsed(float(pref), True, f"switched={switched}")

    def parse_result(self, result: GenResult, call: JudgeCall) -> Parsed:
        if not result.ok:
            return Parsed(None, False, f"judge call failed: {result.error}")
        if not result.logprobs:
            return Parsed(None, False, "judge returned no logprobs (the backend must support top_logprobs)")
        first = result.logprobs[0]
        top = list(first.top) or [(first.token, first.logprob)]
        return self.preference_from_top(top, bool(call.meta.get("is_switched_outputs")))

    def parse(self, text: str, call: JudgeCall) -> Parsed:
        # Without logprobs the answer token alone gives a binary preference; say so in the reason.
        tok = text.strip()
        if tok not in ("m", "M"):
            return Parsed(None, False, f"unparsable judge output {text[:40]!r}")
        pref = 1.0 if tok == "m" else 2.0
        if call.meta.get("is_switched_outputs"):
            pref = 3 - pref
        return Parsed(pref, True, "text token only (no logprobs): binary preference")
