"""Task options are typed: an unknown key or a wrong type is refused, naming the task and the field;
the data folders `harness data pull` copies come from the tasks' declarations."""
from __future__ import annotations

import pytest

from harness.registry import TASKS

TASKS_WITH_OPTIONS = ["mt_bench", "alpaca_eval", "arena_hard", "real_toxicity_prompts", "multifaceted_bench"]


@pytest.mark.parametrize("name", TASKS_WITH_OPTIONS)
def test_unknown_option_is_refused_with_the_field_named(name):
    with pytest.raises(ValueError, match=rf"tasks\[{name}\]\.options\.n_bot: unknown option; known: .*generation"):
        TASKS.get(name)(options={"n_bot": 10})


@pytest.mark.parametrize("name, key, value", [("mt_bench", "category_temperature", "yes"),
                                              ("arena_hard", "rounds", "100"),
                                              ("real_toxicity_prompts", "k", 2.5),
                                              ("multifaceted_bench", "n_rubrics", True),
                                              ("alpaca_eval", "generation", 64)])
def test_option_of_the_wrong_type_is_refused(name, key, value):
    with pytest.raises(ValueError, match=rf"tasks\[{name}\]\.options\.{key}: expected"):
        TASKS.get(name)(options={key: value})


def test_known_options_are_accepted():
    TASKS.get("real_toxicity_prompts")(options={"k": 5, "toxicity_threshold": 1, "generation": {"max_tokens": 8},
                                                "scorer": "profanity_check"})
    TASKS.get("arena_hard")(options={"clustered_rounds": 0, "baseline": "gpt-4-0314"})


def test_data_folders_come_from_the_task_declarations():
    from harness.data import data_folders

    folders = data_folders()
    assert {"mt_bench", "alpaca_eval_2", "arena_hard_v0.1", "flask", "koala", "self_instruct", "realtoxicityprompts",
            "ifeval", "oracles"} <= set(folders)
    assert len(folders) == len(set(folders))
