"""Name -> object registries for tasks, judges and backends.

Tasks, judges, scorers, backends and reports: the engine (``harness/``) reaches concrete
modules only through these names.

Entries may be registered eagerly with a decorator or lazily as "module:attr"
strings, so that heavy optional dependencies are imported only when used.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any


class UnknownName(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class Registry:
    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, Any] = {}
        # "prefix." -> factory(rest) for open families of names (lm-eval's tasks: "lm_eval.<task>")
        self._families: dict[str, Any] = {}

    def register_family(self, prefix: str, factory: str) -> None:
        """Names ``<prefix><rest>`` resolve to ``factory(rest)`` ("module:function")."""
        self._families[prefix] = factory

    def register(self, name: str, obj: Any = None):
        if obj is not None:
            self._items[name] = obj
            return obj

        def deco(o):
            self._items[name] = o
            return o

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Any:
        for prefix, factory in self._families.items():
            if name.startswith(prefix) and name not in self._items and len(name) > len(prefix):
                self._items[name] = _resolve(factory)(name[len(prefix):])
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownName(f"unknown {self.what} '{name}'. Known: {', '.join(self.names())}.{hint}")
        obj = self._items[name]
        if isinstance(obj, str):
            obj = self._items[name] = _resolve(obj)
        return obj


def _resolve(target: str) -> Any:
    """"module:attr", or "module" for a module of functions (a report)."""
    module, _, attr = target.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


TASKS = Registry("task")
JUDGES = Registry("judge")
BACKENDS = Registry("backend")
# everything that turns a completion into a number (harness.scorers): factory(argument, **options)
SCORERS = Registry("scorer")
# report modules the engine hands records to, by name, without importing them
REPORTS = Registry("report")
# `harness bench build NAME` for data that is not a benchmark (benchmarks declare `build_name`)
BUILDERS = Registry("builder")

# Built-in entries, imported lazily.
BACKENDS.register("hf", "harness.backends.hf:HFBackend")
BACKENDS.register("openai", "harness.backends.openai_backend:OpenAIBackend")
BACKENDS.register("vllm", "harness.backends.vllm_backend:VLLMBackend")

TASKS.register("mt_bench", "tasks.mt_bench:MTBench")
TASKS.register("alpaca_eval", "tasks.alpaca_eval:AlpacaEval")
TASKS.register("arena_hard", "tasks.arena_hard:ArenaHard")
TASKS.register("multifaceted_bench", "tasks.multifaceted.task:MultifacetedBench")
TASKS.register("real_toxicity_prompts", "tasks.real_toxicity_prompts:RealToxicityPrompts")
TASKS.register("ifeval", "tasks.lm_eval.ifeval:IFEval")
TASKS.register_family("lm_eval.", "tasks.lm_eval.task:lm_eval_task_class")

JUDGES.register("mt_bench_single", "judges.mt_bench_judge:MTBenchSingleJudge")
# deterministic scripted answers: dry runs and plumbing tests
BACKENDS.register("scripted", "harness.fake:ScriptedBackend")
JUDGES.register("weighted_alpaca_eval_gpt4_turbo", "judges.alpaca_eval_judge:WeightedAlpacaEvalJudge")
JUDGES.register("arena_hard_v0.1", "judges.arena_hard_judge:ArenaHardJudge")
JUDGES.register("multifaceted_rubric", "judges.rubric_judge:RubricJudge")

SCORERS.register("classifier", "harness.scorers:classifier_scorer")  # classifier:NAME, a probability
SCORERS.register("toxicity", "harness.scorers:toxicity_penalty_scorer")  # toxicity:NAME, minus it
SCORERS.register("reward_model", "harness.scorers:reward_model_scorer")  # reward_model:PATH_OR_HUB_ID
SCORERS.register("judge", "harness.scorers:judge_scorer")  # judge[:KIND], the run config's judge model

# the best-of-n analysis of a rerank's pool: analyze(table, ns, meta), write_analysis(result, dir, stem)
REPORTS.register("best_of_n", "reports.bestofn")

# Multifaceted-Collection-format training data: built like a bench, evaluated by nothing
BUILDERS.register("collection", "tasks.multifaceted.collection_build:CollectionBuild")
