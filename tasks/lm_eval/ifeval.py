"""IFEval (Zhou et al., 2023) through lm-eval's own ``ifeval`` task and instruction checkers,
on the local copy of the 541 prompts (``<data dir>/ifeval/input_data.jsonl``): no download.

Headline: prompt-level strict accuracy. Also the instruction-level and loose accuracies
(lm-eval's metrics) and, per instruction type, strict and loose accuracy.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from harness.data import data_dir as default_data_dir
from tasks.lm_eval.task import LMEvalTask

INPUT_FILE = Path("ifeval") / "input_data.jsonl"


class IFEval(LMEvalTask):
    name = "ifeval"
    data_sources = ("ifeval",)  # folders under the data dir (`harness data pull`)
    lm_eval_task = "ifeval"
    builtin_folder = "ifeval"
    primary_metric = "prompt_level_strict_acc"

    def input_path(self) -> Path:
        path = Path(self.data_dir or default_data_dir()) / INPUT_FILE
        if not path.is_file():
            raise ValueError(f"tasks[{self.name}]: {path} not found (the IFEval prompts; set --data-dir or "
                             "HARNESS_DATA_DIR to the folder that holds ifeval/input_data.jsonl)")
        return path

    def default_overrides(self) -> dict:
        # lm-eval's YAML reads google/IFEval from the Hub; the same prompts are staged locally
        return {"dataset_path": "json", "dataset_name": None, "test_split": "train",
                "dataset_kwargs": {"data_files": {"train": str(self.input_path())}}}

    def evaluate_model(self, *args, **kwargs) -> list:
        from tasks.lm_eval.ifeval_scoring import seeded

        # lm-eval leaves langdetect unseeded, so a response's language verdict could change
        # between runs; seeded, a rerun scores the same (as `harness leaderboard ifeval` does)
        with seeded():
            return super().evaluate_model(*args, **kwargs)

    def breakdown(self, rows, instances) -> dict:
        """Accuracy per instruction type, strict and loose (lm-eval's per-instruction values)."""
        acc: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"strict": [], "loose": []})
        for s in rows:
            metric = s.criterion.split(",")[0]
            kind = {"inst_level_strict_acc": "strict", "inst_level_loose_acc": "loose"}.get(metric)
            if kind is None:
                continue
            ids = instances[s.instance_id].metadata["doc"]["instruction_id_list"]
            for inst_id, ok in zip(ids, s.details["value"]):
                acc[inst_id][kind].append(bool(ok))
        return {"by_instruction": {k: {"n": len(v["strict"]),
                                       "strict_acc": sum(v["strict"]) / len(v["strict"]) if v["strict"] else None,
                                       "loose_acc": sum(v["loose"]) / len(v["loose"]) if v["loose"] else None}
                                   for k, v in sorted(acc.items())}}

    # -- `harness leaderboard ifeval --responses FILE`: score published responses
    @classmethod
    def add_leaderboard_args(cls, parser: argparse.ArgumentParser) -> None:
        from tasks.lm_eval import ifeval_scoring

        ifeval_scoring.add_leaderboard_args(parser)

    @classmethod
    def leaderboard(cls, args) -> str:
        from tasks.lm_eval import ifeval_scoring

        return ifeval_scoring.leaderboard_text(args)
