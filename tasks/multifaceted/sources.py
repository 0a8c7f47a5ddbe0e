"""The five source benchmarks of Multifaceted Bench, each read in its own schema.

AlpacaEval 2.0, FLASK, Koala, MT-Bench and Self-Instruct overlap heavily (all 252
Self-Instruct tasks recur in AlpacaEval and FLASK; Koala recurs in both). Instructions
are deduplicated by normalised text (case, whitespace and FLASK's "Input:" label
ignored); every item keeps the provenance of every source it occurs in. Sampling is
per source, seeded, with target counts.

Default mix: the paper gives only the total (921 prompts from the five benchmarks); its
per-source counts are in no file reachable here (JANUS README, Makefile and code, and
the source repositories). ``DEFAULT_TARGETS`` is therefore OUR choice, summing to 921:
all 80 MT-Bench first turns, 100 Koala prompts, and the rest spread over AlpacaEval 2.0,
FLASK and Self-Instruct. Pass ``targets`` to use any other mix. ``stratified_targets`` scales a
mix down to N instructions (``--limit N``).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.records import Instance

SOURCES = ("alpaca_eval_2", "flask", "koala", "mt_bench", "self_instruct")
# drawn in this order: the small sources first, so the broad ones (which contain them) cannot use them up
DEFAULT_TARGETS = {"mt_bench": 80, "self_instruct": 191, "koala": 100, "flask": 300, "alpaca_eval_2": 250}
TASK_NAME = "multifaceted_bench"

SOURCE_FILES = {
    "alpaca_eval_2": "alpaca_eval_2/reference_outputs/gpt4_1106_preview/model_outputs.json",
    "flask": "flask/flask_evaluation.jsonl",
    "koala": "koala/koala_test_set.jsonl",
    "mt_bench": "mt_bench/question.jsonl",
    "self_instruct": "self_instruct/user_oriented_instructions.jsonl",
}


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(location, row) for a .json list or a .jsonl file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: source file not found (is HARNESS_DATA_DIR set?)")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows")
        return [(f"{path} row {i}", r) for i, r in enumerate(data)]
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append((f"{path} line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: not valid JSON ({e.msg})") from e
    return out


def _field(row: dict, name: str, where: str, kind=str):
    value = row.get(name) if isinstance(row, dict) else None
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise ValueError(f"{where}: field '{name}' missing or not a non-empty {getattr(kind, '__name__', kind)}")
    return value


def _instance(source: str, native_id, text: str, category: str = "", **meta) -> Instance:
    return Instance(task=TASK_NAME, id=f"{source}/{native_id}", turns=[text], source=source, category=category,
                    metadata={"source_id": str(native_id), **meta})


def load_source(name: str, data_dir: str | Path) -> list[Instance]:
    """One source benchmark, in its own schema, as Instances (one user turn each)."""
    if name not in SOURCE_FILES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    path = Path(data_dir) / SOURCE_FILES[name]
    out = []
    for i, (where, row) in enumerate(_rows(path)):
        if name == "alpaca_eval_2":  # id = position in AlpacaEval's canonical order
            out.append(_instance(name, i, _field(row, "instruction", where), _field(row, "dataset", where)))
        elif name == "flask":
            out.append(_instance(name, _field(row, "idx", where, int), _field(row, "instruction", where),
                                 _field(row, "task", where), skill=row.get("skill"), domain=row.get("domain"),
                                 difficulty=row.get("difficulty")))
        elif name == "koala":
            out.append(_instance(name, _field(row, "id", where), _field(row, "prompt", where), "koala"))
        elif name == "mt_bench":  # the bench is single-turn: the first turn is the prompt
            turns = _field(row, "turns", where, list)
            if not turns or not isinstance(turns[0], str):
                raise ValueError(f"{where}: field 'turns' has no first turn")
            out.append(_instance(name, _field(row, "question_id", where, int), turns[0], _field(row, "category", where),
                                 later_turns=turns[1:]))
        else:  # self_instruct: the instruction plus its instance input, as AlpacaEval writes it
            instruction = _field(row, "instruction", where)
            instances = row.get("instances") or [{}]
            given = (instances[0] or {}).get("input", "") or ""
            text = f"{instruction}\n\n{given}" if given.strip() else instruction
            out.append(_instance(name, _field(row, "id", where), text, row.get("motivation_app", "")))
    return out


def normalise_text(text: str) -> str:
    """Dedup key: lower case, FLASK's "Input:" line label dropped, whitespace collapsed."""
    text = re.sub(r"(^|\n)[ \t]*input:[ \t]*", " ", text, flags=re.IGNORECASE)
    return " ".join(text.lower().split())


@dataclass
class Pool:
    """All instructions of the loaded sources, grouped by normalised text."""

    groups: dict[str, list[Instance]] = field(default_factory=dict)  # key -> occurrences, load order

    def provenance(self, key: str) -> list[dict]:
        return [{"source": i.source, "id": i.metadata["source_id"], "category": i.category} for i in self.groups[key]]

    def sources_of(self, key: str) -> set[str]:
        return {i.source for i in self.groups[key]}


def build_pool(data_dir: str | Path, sources=SOURCES) -> Pool:
    pool = Pool()
    for name in sources:
        for inst in load_source(name, data_dir):
            pool.groups.setdefault(normalise_text(inst.turns[0]), []).append(inst)
    return pool


def sample_instructions(pool: Pool, targets: dict[str, int] | None = None, seed: int = 0) -> list[Instance]:
    """Seeded per-source sample without repeats across sources.

    Sources are drawn in the order of ``targets``; an instruction taken for one source is
    not available to the next. A target of -1 means "all that remain". Each returned
    Instance carries ``metadata["provenance"]``: every source the instruction occurs in.
    """
    targets = dict(DEFAULT_TARGETS if targets is None else targets)
    unknown = set(targets) - set(SOURCES)
    if unknown:
        raise ValueError(f"targets: unknown source(s) {sorted(unknown)}; known: {', '.join(SOURCES)}")
    taken: set[str] = set()
    picked: list[Instance] = []
    for name, k in targets.items():
        if not isinstance(k, int) or k < -1:
            raise ValueError(f"targets: field '{name}' must be an integer >= 0 (or -1 for all), got {k!r}")
        candidates = []  # first occurrence of each untaken key in this source
        for key, occurrences in pool.groups.items():
            if key in taken:
                continue
            mine = [i for i in occurrences if i.source == name]
            if mine:
                candidates.append((key, mine[0]))
        if k == -1:
            k = len(candidates)
        if k > len(candidates):
            raise ValueError(f"targets: source '{name}' asks for {k} instructions but only {len(candidates)} "
                             "distinct ones remain after deduplication")
        rng = random.Random(f"{seed}/{name}")  # str seeds are stable across runs and platforms
        for key, inst in rng.sample(candidates, k):
            taken.add(key)
            meta = {**inst.metadata, "provenance": pool.provenance(key), "dedup_key": key}
            picked.append(Instance(task=inst.task, id=inst.id, turns=list(inst.turns), source=inst.source,
                                   category=inst.category, metadata=meta))
    return picked


def stratified_targets(targets: dict[str, int], n: int) -> dict[str, int]:
    """``n`` instructions split over the sources of ``targets`` in its proportions (largest
    remainders; ties by the order of ``targets``), every source getting at least one when ``n``
    allows. A target of -1 ("all that remain") cannot be scaled and is refused."""
    if any(not isinstance(k, int) or k < 0 for k in targets.values()):
        raise ValueError(f"targets: --limit needs explicit counts per source, got {targets}")
    total = sum(targets.values())
    if n >= total:
        return dict(targets)
    names = [s for s, k in targets.items() if k > 0]
    exact = {s: n * targets[s] / total for s in names}
    out = {s: int(exact[s]) for s in names}
    by_remainder = sorted(names, key=lambda s: -(exact[s] - out[s]))  # stable: order of targets on ties
    for s in by_remainder[:n - sum(out.values())]:
        out[s] += 1
    if n >= len(names):  # a source rounded to zero borrows from the largest one
        for s in names:
            if out[s] == 0:
                out[max(names, key=lambda x: out[x])] -= 1
                out[s] = 1
    return {s: out.get(s, 0) for s in targets}
