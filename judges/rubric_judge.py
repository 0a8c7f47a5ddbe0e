"""The JANUS absolute-grading judge for Multifaceted Bench.

One judge call per rubric, N runs per rubric (default 3, averaged later by the task),
the reference answer shown as the score-5 answer, the rubric as ``json.dumps(rubric,
indent=4)`` exactly as JANUS ``run_eval_openai.py`` formats it, and the user message
``ABS_USER_PROMPT_TEMPLATE.format(...).strip()``.

Whether the judge sees the system message is a setting. JANUS's evaluation Makefile passes
no ``--system_key``, so by default the judge sees only the prompt; when enabled, the
instruction is ``f"{system}\\n{prompt}"`` as in JANUS ``prepare_inputs``.

Score parsing has two modes:
- ``end`` (default): the score is read after the LAST ``[RESULT]`` tag, accepting the
  variants of JANUS's test list (``Score: 2``, ``Result: 4``, ``4/5``, ``5 out of 5``,
  ``score of 1``, ``(5)``); without a usable tag, the last score-like match in the text
  wins. A rubric quoted in the feedback ("Score 5") cannot win over the final result.
- ``official``: JANUS ``parse_judgment_abs`` semantics (first match of its pattern anywhere
  in the output), for reproducing its numbers including its weakness.
"""
from __future__ import annotations

import json
import re

from judges.base import Judge, JudgeCall, Parsed
from harness.records import Completion, Instance
from tasks.multifaceted.prompts import ABS_SYSTEM_PROMPT, ABS_USER_PROMPT_TEMPLATE, SAMPLING_PARAMS_OPENAI

MIN_SCORE, MAX_SCORE = 1, 5

_RESULT_TAG = re.compile(r"\[\s*result\s*\]\s*:?", re.IGNORECASE)
# what may follow the tag: "3", "Score: 2", "Result: 4", "4/5", "5 out of 5", "score of 1", "(5)", "**4**"
_AFTER_TAG = re.compile(
    r"\s*[*_]*\s*(?:(?:score|result)(?:\s+of)?\s*[:=]?\s*)?[*_]*\s*[(\[]?\s*[*_]*\s*(\d+)", re.IGNORECASE)
# without a tag: "[SCORE] 4", "score of 1", "Score: 3", "(Score 5)", "Result: 4", or a bare "[3]" / "(3)"
_FALLBACK = re.compile(
    r"(?:\[\s*score\s*\]|\bscore\s+of|\bscore\b\s*:?|\bresult\s*:)\s*[(\[]?\s*(\d+)|[(\[]\s*(\d+)\s*[)\]]",
    re.IGNORECASE)
# JANUS utils/output_parser.py ``abs_pattern`` semantics (official mode), same alternatives and
# flags. JANUS compiles it with re.VERBOSE, which drops the space in "score of" (it matches
# "scoreof"): kept, because official mode reproduces JANUS exactly.
_JANUS_PATTERN = re.compile(
    r"(?:\[RESULT\]|Score|\[SCORE\]|\[RESULT\]:|Score:|score:|Result:|\[Result\]|score of)\s*(?:\(\s*|\[\s*|)\s*(\d+)",
    re.IGNORECASE | re.VERBOSE)


def _in_range(value: int) -> Parsed:
    if MIN_SCORE <= value <= MAX_SCORE:
        return Parsed(value, True, "")
    return Parsed(None, False, f"score {value} outside {MIN_SCORE}..{MAX_SCORE}")


def parse_score_from_end(text: str | None) -> Parsed:
    """Score from the end of a judge output (default mode)."""
    if not isinstance(text, str) or not text.strip():
        return Parsed(None, False, "empty judge output")
    tags = list(_RESULT_TAG.finditer(text))
    for tag in reversed(tags):  # the last tag that carries a number is the verdict
        m = _AFTER_TAG.match(text, tag.end())
        if m:
            return _in_range(int(m.group(1)))
    matches = list(_FALLBACK.finditer(text))
    if matches:
        last = matches[-1]
        return _in_range(int(last.group(1) or last.group(2)))
    return Parsed(None, False, "no [RESULT] score found")


def parse_score_official(text: str | None) -> Parsed:
    """JANUS ``parse_judgment_abs``: the first pattern match anywhere in the output."""
    if not isinstance(text, str):
        return Parsed(None, False, "judge output is not text")
    m = _JANUS_PATTERN.search(text)
    if not m:
        return Parsed(None, False, "no match for the JANUS pattern")
    return Parsed(int(m.group(1)), True, "")  # JANUS does not check the range


def feedback_of(text: str) -> str:
    """The feedback part, as JANUS keeps it (text before the first ``[RESULT]``)."""
    return text.split("[RESULT]")[0].strip() if "[RESULT]" in text else text


def format_rubric(rubric) -> str:
    """A rubric dict as JANUS shows it to the judge; a string rubric is shown as is."""
    if isinstance(rubric, (dict, list)):
        return json.dumps(rubric, indent=4)
    return str(rubric)


def render_judge_messages(instruction: str, response: str, reference_answer: str, rubric) -> list[dict]:
    """The exact messages JANUS sends for one (response, rubric)."""
    content = ABS_USER_PROMPT_TEMPLATE.format(
        instruction=instruction, response=response, reference_answer=reference_answer,
        score_rubric=format_rubric(rubric)).strip()
    return [{"role": "system", "content": ABS_SYSTEM_PROMPT}, {"role": "user", "content": content}]


class RubricJudge(Judge):
    """Options: runs (3), judge_sees_system (False), parser ("end"|"official"), method
    ("text"|"logprob"), max_tokens/temperature/top_p (JANUS's OpenAI sampling parameters)."""

    name = "multifaceted_rubric"
    version = "1"
    method = "text"

    DEFAULTS = {"runs": 3, "judge_sees_system": False, "parser": "end", "method": "text", **SAMPLING_PARAMS_OPENAI}
    #: logprob method (for local judges that do not print a well-formed result): the answer is
    #: continued after this prefix for one token and read over the allowed score tokens
    LOGPROB_PREFIX = "Feedback: [RESULT] "

    def __init__(self, options: dict | None = None, data_dir=None):
        merged = {**self.DEFAULTS, **(options or {})}
        unknown = set(merged) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"judge {self.name}: unknown option(s) {sorted(unknown)}; known: {sorted(self.DEFAULTS)}")
        if merged["parser"] not in ("end", "official"):
            raise ValueError(f"judge {self.name}: option 'parser' must be 'end' or 'official', got {merged['parser']!r}")
        if merged["method"] not in ("text", "logprob"):
            raise ValueError(f"judge {self.name}: option 'method' must be 'text' or 'logprob', got {merged['method']!r}")
        if int(merged["runs"]) < 1:
            raise ValueError(f"judge {self.name}: option 'runs' must be >= 1, got {merged['runs']!r}")
        super().__init__(merged, data_dir)
        self.method = merged["method"]

    def instruction_for(self, instance: Instance) -> str:
        prompt = instance.turns[0]
        if self.options["judge_sees_system"] and instance.system:
            return f"{instance.system}\n{prompt}"
        return prompt

    def calls(self, instance: Instance, completion: Completion, **context) -> list[JudgeCall]:
        if not instance.rubrics:
            raise ValueError(f"instance {instance.id}: field 'rubrics' is empty; a rubric judge needs rubrics")
        if not instance.reference:
            raise ValueError(f"instance {instance.id}: field 'reference' (reference_answer) is empty")
        reference = instance.reference[0]
        instruction = self.instruction_for(instance)
        calls = []
        for i, rubric in enumerate(instance.rubrics):
            messages = render_judge_messages(instruction, completion.text, reference, rubric)
            if self.method == "logprob":  # deterministic: one call per rubric, runs would repeat it
                calls.append(JudgeCall(criterion=f"rubric{i}/run0", messages=messages, max_tokens=1, temperature=0.0,
                                       logprob_prefix=self.LOGPROB_PREFIX, allowed=[str(k) for k in range(1, 6)],
                                       meta={"rubric_index": i, "run": 0, "sample_index": 0,
                                             "judge_sees_system": bool(self.options["judge_sees_system"])}))
                continue
            for run in range(int(self.options["runs"])):
                calls.append(JudgeCall(
                    criterion=f"rubric{i}/run{run}", messages=messages,
                    max_tokens=int(self.options["max_tokens"]), temperature=float(self.options["temperature"]),
                    # the run index must reach the request's sample_index: runs are separate samples
                    meta={"rubric_index": i, "run": run, "sample_index": run, "top_p": float(self.options["top_p"]),
                          "judge_sees_system": bool(self.options["judge_sees_system"])}))
        return calls

    def parse(self, text: str, call: JudgeCall | None = None) -> Parsed:
        if self.options["parser"] == "official":
            return parse_score_official(text)
        return parse_score_from_end(text)
