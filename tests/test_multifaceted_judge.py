"""The JANUS rubric judge: byte-identical prompt, score parsing from the end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.records import Completion, Instance
from judges.rubric_judge import RubricJudge, parse_score_from_end, parse_score_official
from tasks.multifaceted.release import record_to_instance

EXAMPLE = Path(__file__).resolve().parents[1] / "tasks" / "multifaceted" / "readme_example.json"

# The published texts, written here in the triple-quoted form of kaistAI/Janus utils/prompts.py
# (commit 5529fbaf88807c67f6d3eb3b2312a2ababce2828), independently of tasks/multifaceted/prompts.py.
PUBLISHED_ABS_SYSTEM_PROMPT = "You are a fair judge assistant tasked with providing clear, objective feedback based on specific criteria, ensuring each assessment reflects the absolute standards set for performance."
PUBLISHED_ABS_USER_PROMPT_TEMPLATE = """
###Task Description:
An instruction (might include an Input inside it), a response to evaluate, and a score rubric representing a evaluation criteria are given.
1. Write a detailed feedback that assess the quality of the response strictly based on the given score rubric, not evaluating in general.
2. After writing a feedback, write a score that is an integer between 1 and 5. You should refer to the score rubric.
3. The output format should look as follows: "Feedback: (write a feedback for criteria) [RESULT] (an integer number between 1 and 5)"
4. Please do not generate any other opening, closing, and explanations.

###The instruction to evaluate:
{instruction}

###Response to evaluate:
{response}

###Reference Answer (Score 5):
{reference_answer}

###Score Rubrics:
{score_rubric}

###Feedback: """

# kaistAI/Janus utils/output_parser.py, its own ``test_cases`` list (input, expected)
JANUS_PARSER_CASES = [
    ("Good job. [RESULT] 3", 3),
    ("Needs improvement. [RESULT] Score: 2", 2),
    ("Well done. [RESULT] Result: 4", 4),
    ("Average. [RESULT] 4/5", 4),
    ("Excellent. [RESULT] 5 out of 5", 5),
    ("Poor performance. [RESULT] score of 1", 1),
    ("Good job. [Result] 3", 3),
    ("Needs improvement. [Result] Score: 2", 2),
    ("Well done. [Result] Result: 4", 4),
    ("Average. [Result] 4/5", 4),
    ("Excellent. [Result] 5 out of 5", 5),
    ("Poor performance. [Result] score of 1", 1),
    ("Good job. [3]", 3),
    ("Good job. (Score 5)", 5),
    ("Good job. [Score 4]", 4),
    ("Good job. score: 3", 3),
    ("Good job. Score: 3", 3),
    ("Good job. score of 1", 1),
    ("Good job. [RESULT] (5)", 5),
]


@pytest.fixture()
def example_instance() -> Instance:
    return record_to_instance(json.loads(EXAMPLE.read_text()), index=0, path=str(EXAMPLE))


def _completion(text: str) -> Completion:
    return Completion(task="multifaceted_bench", instance_id="0", model="m", texts=[text])


def test_prompt_is_byte_identical_to_janus_template(example_instance):
    record = json.loads(EXAMPLE.read_text())
    response = "It rained, the dog hated it.\nSo no more rainy walks: {not a format field}"
    calls = RubricJudge().calls(example_instance, _completion(response))
    assert len(calls) == 4 * 3  # one call per rubric, three runs each
    for i, rubric in enumerate(record["rubric"]):
        expected_user = PUBLISHED_ABS_USER_PROMPT_TEMPLATE.format(
            instruction=record["prompt"], response=response, reference_answer=record["reference_answer"],
            score_rubric=json.dumps(rubric, indent=4)).strip()
        for run in range(3):
            call = calls[i * 3 + run]
            assert call.criterion == f"rubric{i}/run{run}"
            assert call.messages == [{"role": "system", "content": PUBLISHED_ABS_SYSTEM_PROMPT},
                                     {"role": "user", "content": expected_user}]
            assert call.meta["sample_index"] == run and call.meta["judge_sees_system"] is False
    # JANUS sampling for its judge: max_tokens 1024, temperature 1.0, top_p 0.9
    assert (calls[0].max_tokens, calls[0].temperature, calls[0].meta["top_p"]) == (1024, 1.0, 0.9)


def test_system_message_is_a_recorded_setting(example_instance):
    judge = RubricJudge({"judge_sees_system": True, "runs": 1})
    calls = judge.calls(example_instance, _completion("r"))
    assert len(calls) == 4
    user = calls[0].messages[1]["content"]
    assert f"###The instruction to evaluate:\n{example_instance.system}\n{example_instance.turns[0]}\n\n" in user
    assert judge.config()["judge_sees_system"] is True
    assert RubricJudge().config()["judge_sees_system"] is False
    assert judge.config() != RubricJudge({"runs": 1}).config()  # different judgment keys


@pytest.mark.parametrize("text,expected", JANUS_PARSER_CASES)
def test_parser_passes_janus_test_list(text, expected):
    parsed = parse_score_from_end(text)
    assert parsed.ok and parsed.value == expected


def test_official_mode_reproduces_janus_including_its_misses():
    # JANUS compiles its pattern with re.VERBOSE ("score of" becomes "scoreof") and needs a prefix
    # word, so four cases of its own list fail with its own parser
    misses = [t for t, e in JANUS_PARSER_CASES if parse_score_official(t).value != e]
    assert misses == ["Poor performance. [RESULT] score of 1", "Poor performance. [Result] score of 1",
                      "Good job. [3]", "Good job. score of 1"]


def test_rubric_quoting_score_5_does_not_win():
    text = ("Feedback: Unlike the reference answer (Score 5), which weaves a vivid story, this response "
            "is dry. The rubric says Score 5 needs emotional resonance; it has little. [RESULT] 2")
    assert parse_score_from_end(text).value == 2
    assert parse_score_official(text).value == 5  # the JANUS weakness the default mode avoids


def test_trailing_number_after_result_is_ignored():
    assert parse_score_from_end("Feedback: fine. [RESULT] 4\n\nNote: 10 of 12 points covered, 2 missing.").value == 4
    assert parse_score_from_end("Feedback: fine. [RESULT] 3 (out of 5) 5").value == 3


def test_last_result_tag_wins_and_echoed_format_is_skipped():
    text = ('The format is "[RESULT] (an integer number between 1 and 5)". Feedback: ok. [RESULT] 4')
    assert parse_score_from_end(text).value == 4
    assert parse_score_from_end("[RESULT] 2 ... on reflection [RESULT] 3").value == 3


@pytest.mark.parametrize("text", ["Feedback: the response is good and deserves full marks.", "", None,
                                  "Feedback: ok [RESULT] 7", "Feedback: ok [RESULT] 0"])
def test_no_valid_result_is_a_parse_failure(text):
    parsed = parse_score_from_end(text)
    assert not parsed.ok and parsed.value is None and parsed.reason


def test_judge_parse_uses_mode_and_rejects_bad_options():
    assert RubricJudge().parse("x (Score 5) y [RESULT] 1", None).value == 1
    assert RubricJudge({"parser": "official"}).parse("x (Score 5) y [RESULT] 1", None).value == 5
    with pytest.raises(ValueError, match="unknown option"):
        RubricJudge({"rubric_count": 4})
    with pytest.raises(ValueError, match="parser"):
        RubricJudge({"parser": "first"})


def test_logprob_method_reads_score_tokens(example_instance):
    from harness.backends.base import GenResult, TokenLogprob

    judge = RubricJudge({"method": "logprob"})
    calls = judge.calls(example_instance, _completion("r"))
    assert [c.criterion for c in calls] == [f"rubric{i}/run0" for i in range(4)]
    assert calls[0].logprob_prefix == "Feedback: [RESULT] " and calls[0].allowed == ["1", "2", "3", "4", "5"]
    top = [("4", -0.2), ("5", -1.9), ("9", -0.1)]  # "9" is not a score token
    parsed = judge.parse_result(GenResult(logprobs=[TokenLogprob("9", -0.1, top)]), calls[0])
    import math

    p4, p5 = math.exp(-0.2), math.exp(-1.9)  # the lead's reader: probability-weighted score over 1..5
    assert parsed.ok and parsed.value == pytest.approx((4 * p4 + 5 * p5) / (p4 + p5))
    with pytest.raises(ValueError, match="method"):
        RubricJudge({"method": "vote"})
