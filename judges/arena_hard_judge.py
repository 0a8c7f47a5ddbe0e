"""Arena-Hard-Auto v0.1 pairwise judge (lm-sys/arena-hard-auto ``gen_judgment.py`` + ``config/judge_config.yaml``).

* System prompt, user template, regex, temperature and max_tokens come from ``judge_config.yaml``,
  read at run time by path.
* Two games per question: game 1 shows the baseline as Assistant A and the model as B; game 2 swaps them.
* Verdict parsing as the official ``get_score``: all regex matches in the judge's text (non-empty);
  none -> no verdict (the official code then asks the judge to continue, up to
  ``number_of_judgment_attempts``); exactly one distinct label -> that label (``strip("\\n")``);
  several different labels -> no verdict. A label outside the five verdicts is kept as the raw value
  but counts as unparsable, so scoring drops that game alone (``show_result.py``).
"""
from __future__ import annotations

import re
from pathlib import Path

from harness.data import data_dir as data_root
from harness.records import Completion, Instance
from judges.base import Judge, JudgeCall, Parsed

VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
CONTINUE_PROMPT = "continue your judgment and finish by outputting a final verdict label"


def default_config_path(data_dir=None) -> Path:
    return data_root(data_dir) / "arena_hard_v0.1" / "config" / "judge_config.yaml"


def get_score(judgment: str, pattern: re.Pattern) -> tuple[str | None, bool]:
    """(verdict or None, try_again) with the official semantics."""
    matches = [m for m in pattern.findall(judgment) if m != ""]
    if len(set(matches)) == 0:
        return None, True
    if len(set(matches)) == 1:
        return matches[0].strip("\n"), False
    return None, False


class ArenaHardJudge(Judge):
    name = "arena_hard_v0.1"
    version = "efc012e"
    method = "text"

    def __init__(self, options: dict | None = None, data_dir=None):
        super().__init__(options, data_dir)
        self._cfg: dict | None = None

    @property
    def config_path(self) -> Path:
        return Path(self.options.get("judge_config") or default_config_path(self.data_dir))

    def judge_config(self) -> dict:
        if self._cfg is None:
            import yaml

            path = self.config_path
            if not path.is_file():
                raise FileNotFoundError(f"Arena-Hard judge config not found: {path}")
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
            for field in ("system_prompt", "prompt_template", "regex_pattern", "baseline_model"):
                if not isinstance(cfg, dict) or field not in cfg:
                    raise ValueError(f"{path}: field '{field}' missing")
            if not isinstance(cfg["prompt_template"], list) or len(cfg["prompt_template"]) != 1:
                raise ValueError(f"{path}: field 'prompt_template' must be a one-element list (single turn)")
            self._cfg = cfg
        return self._cfg

    def config(self) -> dict:
        cfg = self.judge_config()
        keep = ("system_prompt", "prompt_template", "regex_pattern", "temperature", "max_tokens", "baseline_model")
        return {**super().config(), **{k: cfg.get(k) for k in keep}}

    @property
    def baseline(self) -> str:
        return self.options.get("baseline") or self.judge_config()["baseline_model"]

    def render(self, question: str, answer_a: str, answer_b: str) -> list[dict]:
        cfg = self.judge_config()
        user = cfg["prompt_template"][0].format(question_1=question, answer_1=answer_a, answer_2=answer_b)
        return [{"role": "system", "content": cfg["system_prompt"]}, {"role": "user", "content": user}]

    def calls(self, instance: Instance, completion: Completion, **context) -> list[JudgeCall]:
        baseline_answer = instance.metadata.get("baseline_answer")
        if baseline_answer is None:
            raise ValueError(f"arena_hard instance {instance.id}: no baseline answer in metadata['baseline_answer']")
        cfg = self.judge_config()
        question, answer = instance.turns[0], completion.text
        # option max_tokens: a smaller budget for small local judges (not the official 4096)
        max_tokens = int(self.options.get("max_tokens") or cfg.get("max_tokens", 4096))
        common = dict(max_tokens=max_tokens, temperature=float(cfg.get("temperature", 0)),
                      baseline=self.baseline)
        return [
            JudgeCall(criterion="game1", messages=self.render(question, baseline_answer, answer), position="B",
                      meta={"game": 1}, **common),
            JudgeCall(criterion="game2", messages=self.render(question, answer, baseline_answer), position="A",
                      meta={"game": 2}, **common),
        ]

    def pattern(self) -> re.Pattern:
        return re.compile(self.judge_config()["regex_pattern"])

    def parse(self, text: str, call: JudgeCall) -> Parsed:
        score, try_again = get_score(self.transcript(call, text), self.pattern())
        if score is None:
            why = "no verdict label" if try_again else "several different verdict labels"
            return Parsed(None, False, why)
        if score not in VERDICTS:
            return Parsed(score, False, f"label {score!r} is not one of the five verdicts")
        return Parsed(score, True)

    def followup(self, call: JudgeCall, judge_text: str) -> JudgeCall | None:
        """The official second attempt (gen_judgment.py): only when no label was found, only once;
        the conversation so far plus a request to finish with a label. It is parsed the official
        way, on ``"\\n" + first + "\\n" + second`` (see :meth:`transcript`)."""
        previous = call.meta.get("previous", []) + [judge_text]
        _, try_again = get_score(self.joined(previous), self.pattern())
        if not try_again or len(previous) >= 2:
            return None
        msgs = call.messages + [{"role": "assistant", "content": judge_text},
                                {"role": "user", "content": CONTINUE_PROMPT}]
        return JudgeCall(criterion=call.criterion, messages=msgs, max_tokens=call.max_tokens,
                         temperature=call.temperature, baseline=call.baseline, position=call.position,
                         meta={**call.meta, "attempt": len(previous) + 1, "previous": previous})

    def transcript(self, call: JudgeCall, text: str) -> str:
        previous = call.meta.get("previous") if call is not None else None
        return self.joined(previous + [text]) if previous else text

    @staticmethod
    def joined(texts: list[str]) -> str:
        return "".join("\n" + t for t in texts)
