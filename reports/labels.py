"""Honest labels: which numbers may be called "official".

The rule (written once in the report, see ``RULE``): a number is *official* when it is computed the
official way (the task lists it in ``official_metrics``) **and** from the official judge's outputs
(the judge model the benchmark's own code uses, scoring by its text; for RealToxicityPrompts the
Perspective API; for lm-eval tasks lm-eval's own metric code). A number computed the official way
from another judge (a local model, logprob scoring) is labelled with that judge's name and method
instead, and is not comparable to published leaderboards.

The pipeline records who graded each result (``judge``, ``judge_model``, ``judge_api``,
``judge_method``, ``scorer`` in results.json, see ``harness.provenance``); the official judge is
the model itself behind the OpenAI API (``judge_api: openai``), not a model served under its name.
A result that records no grader is not called official either: nothing says whose outputs it was
computed from.
"""
from __future__ import annotations

# task -> (judge kind, judge models) of the official implementation; the model names are those the
# official code calls (AlpacaEval weighted_alpaca_eval_gpt4_turbo/configs.yaml, Arena-Hard v0.1
# judge_config.yaml, FastChat gen_judgment.py --judge-model gpt-4, JANUS run_eval --model_name)
OFFICIAL_JUDGES = {
    "alpaca_eval": ("weighted_alpaca_eval_gpt4_turbo", ("gpt-4-1106-preview",)),
    "arena_hard": ("arena_hard_v0.1", ("gpt-4-1106-preview",)),
    "mt_bench": ("mt_bench_single", ("gpt-4", "gpt-4-0613")),
    "multifaceted_bench": ("multifaceted_rubric", ("gpt-4-0125-preview",)),
}
# task -> the scorer of the official implementation
OFFICIAL_SCORERS = {"real_toxicity_prompts": "perspective"}
SCORER_NAMES = {"perspective": "the Perspective API"}
# scorers that are a benchmark library's own metric code, no model involved: official for its tasks
OWN_CODE_SCORERS = {"lm_eval"}

RULE = ('"official" means the official computation on the official judge\'s outputs. A number computed '
        "the official way from another judge (a local model, logprob scoring) is labelled with that "
        "judge's name and method and is not comparable to published leaderboards.")


def official_grader(task: str) -> str | None:
    """The official judge model (or scorer) of a task, for the banner; None if the harness knows none."""
    if task in OFFICIAL_JUDGES:
        return " or ".join(OFFICIAL_JUDGES[task][1])
    if task in OFFICIAL_SCORERS:
        return SCORER_NAMES.get(OFFICIAL_SCORERS[task], OFFICIAL_SCORERS[task])
    return None


def grader(metrics: dict) -> dict:
    """Who graded one result: {"name", "method", "kind"} ("judge" | "scorer"), or {} when not recorded."""
    if metrics.get("judge_model"):
        return {"kind": "judge", "name": str(metrics["judge_model"]), "api": metrics.get("judge_api"),
                "method": str(metrics.get("judge_method") or "text"), "judge": metrics.get("judge")}
    if metrics.get("scorer"):
        return {"kind": "scorer", "name": str(metrics["scorer"]), "method": None}
    return {}


def is_official_grader(task: str, g: dict) -> bool:
    if g.get("kind") == "judge" and task in OFFICIAL_JUDGES:
        kind, models = OFFICIAL_JUDGES[task]
        # the model itself (the OpenAI API), not a local model served under its name
        return (g["name"] in models and g["api"] == "openai" and g["method"] == "text"
                and g.get("judge") in (None, kind))
    if g.get("kind") == "scorer":
        return g["name"] in OWN_CODE_SCORERS or g["name"] == OFFICIAL_SCORERS.get(task)
    return False


def _api_text(api: str | None) -> str:
    """' (served locally)', ' (at host)', ' (hf backend)'; '' for the OpenAI API or when unknown."""
    if api in (None, "openai"):
        return ""
    if api == "harness-serve":
        return " (served locally)"
    if api.startswith("server:"):
        return f" (at {api[len('server:'):]})"
    return f" ({api} backend)"


def grader_text(g: dict) -> str:
    """Short label: 'judge smollm2-judge, logprob scoring' / 'judge gpt-4o' / 'scorer detoxify' /
    'judge not recorded'. The method is named when it is not the benchmark's own ("text": the judge's
    answer read as the official code reads it)."""
    if not g:
        return "judge not recorded"
    if g["kind"] == "judge":
        return f"judge {g['name']}{_api_text(g.get('api'))}" + (
            f", {g['method']} scoring" if g["method"] != "text" else "")
    return f"scorer {g['name']}"


def label(task: str, metric: str | None, official_metrics: list, g: dict) -> str:
    """'official', or what makes the number something else."""
    if is_official_grader(task, g):
        return "official" if metric in official_metrics else f"harness metric, {grader_text(g)}"
    return grader_text(g)
