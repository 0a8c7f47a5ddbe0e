"""Score existing IFEval responses (``harness leaderboard ifeval --responses FILE``).

The responses file is what the IFEval authors publish model outputs as: JSONL lines
``{"prompt": ..., "response": ...}``. Each is matched to its row of the input data
(``<data dir>/ifeval/input_data.jsonl``) by exact prompt text (no stripping: the prompts keep
upstream whitespace and typos) and checked with lm-eval's own ``ifeval`` code:
``utils.process_results`` per prompt (strict and loose), the ``mean`` of the prompt-level values
and ``utils.agg_inst_level_acc`` for the instruction level, as lm-eval's ``ifeval.yaml`` does.

Two sources of randomness that lm-eval leaves unseeded are seeded here, so one file always gets
one score: langdetect (the language and english-case checkers) draws random numbers on every call,
and a checker whose argument is unusable draws a replacement from Python's ``random`` (two prompts of
the 541: keys 1122 and 1129 ask for the "letter" '#' and '!', which ``LetterFrequencyChecker``
replaces by a random ASCII letter). Both are seeded per prompt (``SEED`` and the prompt's key), so a
prompt's verdict does not depend on the other lines of the file, and restored afterwards.
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import random
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from harness.data import data_dir
from harness.jsonl import read_jsonl

INPUT_FILE = Path("ifeval") / "input_data.jsonl"
SEED = 0
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
CSV_COLUMNS = ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")  # the same four, in percent


def default_input_path() -> Path:
    return data_dir() / INPUT_FILE


@functools.lru_cache(maxsize=1)  # a failure is not cached: a later call checks again
def _lm_eval_utils():
    """lm-eval's IFEval ``utils``, imported only once nltk can find punkt_tab: otherwise its import
    would try ``nltk.download`` (a network call)."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise FileNotFoundError("NLTK punkt_tab (English) is not installed, and lm-eval's IFEval checkers "
                                "need it: run `harness models prepare`") from None
    from lm_eval.tasks.ifeval import utils

    return utils


def _rows(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    rows = read_jsonl(path)  # its errors name the line; the numbers below skip blank lines as it does
    numbers = [n for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1) if line.strip()]
    return list(zip(numbers, rows))


def read_input(path: str | Path) -> dict[str, dict]:
    """Input rows by prompt text; each row checked to be what the checkers need."""
    known = _lm_eval_utils().instructions_registry.INSTRUCTION_DICT
    path = Path(path)
    by_prompt: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for n, row in _rows(path, "IFEval input data"):
        for field, kind in (("key", int), ("prompt", str), ("instruction_id_list", list), ("kwargs", list)):
            if not isinstance(row.get(field), kind) or isinstance(row.get(field), bool):
                raise ValueError(f"{path}: line {n}: field '{field}' must be of type {kind.__name__}")
        ids, kwargs = row["instruction_id_list"], row["kwargs"]
        if len(ids) != len(kwargs) or not ids:
            raise ValueError(f"{path}: line {n}: 'instruction_id_list' and 'kwargs' must be non-empty lists "
                             f"of the same length (got {len(ids)} and {len(kwargs)})")
        unknown = [i for i in ids if i not in known]
        if unknown or not all(isinstance(k, dict) for k in kwargs):
            raise ValueError(f"{path}: line {n}: unknown instruction id(s) {unknown} or a 'kwargs' entry that "
                             "is not an object")
        if row["prompt"] in by_prompt:
            raise ValueError(f"{path}: line {n}: the same prompt as line {first_line[row['prompt']]}")
        by_prompt[row["prompt"]], first_line[row["prompt"]] = row, n
    if not by_prompt:
        raise ValueError(f"{path}: no input rows")
    return by_prompt


def read_responses(path: str | Path, inputs: dict[str, dict]) -> list[tuple[int, dict, str]]:
    """(line, input row, response) per line of a responses file, each prompt at most once."""
    path = Path(path)
    out, seen = [], {}
    for n, row in _rows(path, "responses"):
        for field in ("prompt", "response"):
            if not isinstance(row.get(field), str):
                raise ValueError(f"{path}: line {n}: field '{field}' must be a string"
                                 + (" (it is missing)" if field not in row else ""))
        prompt = row["prompt"]
        if prompt not in inputs:
            raise ValueError(f"{path}: line {n}: the prompt {prompt[:60]!r}... is not in the input data "
                             "(prompts must match exactly, whitespace included)")
        if prompt in seen:
            raise ValueError(f"{path}: line {n}: the same prompt as line {seen[prompt]}")
        seen[prompt] = n
        out.append((n, inputs[prompt], row["response"]))
    if not out:
        raise ValueError(f"{path}: no responses")
    return out


@contextmanager
def seeded(seed: int = SEED):
    """Set langdetect's seed (its detectors read ``DetectorFactory.seed`` on every call); restore it and
    Python's ``random`` state afterwards."""
    from langdetect import DetectorFactory

    before, state = DetectorFactory.seed, random.getstate()
    DetectorFactory.seed = seed
    try:
        yield
    finally:
        DetectorFactory.seed = before
        random.setstate(state)


def score_one(doc: dict, response: str) -> dict:
    """lm-eval's ``process_results`` for one input row, seeded for that row (see the module doc)."""
    utils = _lm_eval_utils()
    with seeded():
        random.seed(f"{SEED}:{doc['key']}")
        return utils.process_results(doc, [response])


def score_lines(responses_path: str | Path, inputs: dict[str, dict]) -> list[dict]:
    """Per response line: its line number, the input key and lm-eval's four ``process_results`` values."""
    return [{"line": n, "key": doc["key"], "instruction_id_list": doc["instruction_id_list"],
             **score_one(doc, response)} for n, doc, response in read_responses(responses_path, inputs)]


def aggregate(per_prompt: list[dict], n_input_prompts: int | None = None) -> dict:
    """The four accuracies (fractions) as lm-eval aggregates them, and accuracy per instruction id."""
    utils = _lm_eval_utils()
    result = {}
    for m in METRICS:
        values = [p[m] for p in per_prompt]
        result[m] = utils.agg_inst_level_acc(values) if m.startswith("inst_") else sum(values) / len(values)
    by_id: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"strict": [], "loose": []})
    for p in per_prompt:  # an id listed twice in one prompt (a range) counts twice, as in inst-level
        for i, inst in enumerate(p["instruction_id_list"]):
            by_id[inst]["strict"].append(p["inst_level_strict_acc"][i])
            by_id[inst]["loose"].append(p["inst_level_loose_acc"][i])
    result.update(
        n_prompts=len(per_prompt), n_input_prompts=n_input_prompts,
        n_instructions=sum(len(p["instruction_id_list"]) for p in per_prompt),
        by_instruction={k: {"n": len(v["strict"]), "strict_acc": sum(v["strict"]) / len(v["strict"]),
                            "loose_acc": sum(v["loose"]) / len(v["loose"])} for k, v in sorted(by_id.items())})
    return result


def score_responses(responses_path: str | Path, input_path: str | Path | None = None) -> dict:
    """prompt/inst-level strict/loose accuracy (fractions), counts and per-instruction-id accuracy."""
    inputs = read_input(input_path or default_input_path())
    return aggregate(score_lines(responses_path, inputs), n_input_prompts=len(inputs))


# -- `harness leaderboard ifeval`
def add_leaderboard_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, metavar="FILE",
                        help='JSONL of {"prompt", "response"} lines (the IFEval authors\' response format)')
    parser.add_argument("--input-data", metavar="FILE",
                        help=f"the IFEval prompts (default: <data dir>/{INPUT_FILE})")
    parser.add_argument("--format", choices=["md", "csv", "json"], default="md")


def leaderboard_text(args: argparse.Namespace) -> str:
    r = score_responses(args.responses, args.input_data)
    pct = [100 * r[m] for m in METRICS]
    if args.format == "json":
        return json.dumps(r, indent=2) + "\n"
    if args.format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        w.writerow([f"{v:.4f}" for v in pct])
        return buf.getvalue()
    lines = [f"IFEval: {r['n_prompts']} of {r['n_input_prompts']} prompts, {r['n_instructions']} instructions "
             f"(accuracy %, lm-eval {_lm_eval_version()} checkers)", "",
             "| " + " | ".join(METRICS) + " |", "|" + " ---: |" * len(METRICS),
             "| " + " | ".join(f"{v:.2f}" for v in pct) + " |", "",
             "| instruction | n | strict | loose |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {v['n']} | {100 * v['strict_acc']:.2f} | {100 * v['loose_acc']:.2f} |"
              for k, v in r["by_instruction"].items()]
    return "\n".join(lines) + "\n"


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")
