"""Read JANUS's own evaluation output files, so official runs can be scored by the harness.

JANUS ``run_eval_openai.py`` writes ``<output_dir>/responses_gpt4_eval/<model>_evaluation.json``:
a JSON object id -> bench record plus ``"feedback": [...]`` and ``"score": [...]`` (one entry
per rubric, in rubric order). One file is one judge run; the paper averaged 3 runs, so a
model may come with several files (run index = the order the files are given in).
"""
from __future__ import annotations

import json
from pathlib import Path

from reports.multifaceted_metrics import RubricScore

SUFFIX = "_evaluation.json"


def model_name(path: Path) -> str:
    name = path.name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else path.stem


def find_evaluation_files(paths: list[str | Path]) -> list[Path]:
    """Files as given; directories are searched recursively for ``*_evaluation.json`` (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob(f"*{SUFFIX}"))
            if not found:
                raise FileNotFoundError(f"{p}: no *{SUFFIX} files found")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: evaluation file not found")
    return out


def read_evaluation(path: Path, run: int, model: str | None = None) -> list[RubricScore]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}); truncated file?") from e
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object id -> record (JANUS *_evaluation.json)")
    model = model or model_name(path)
    rows = []
    for rid, rec in data.items():
        scores = rec.get("score") if isinstance(rec, dict) else None
        if not isinstance(scores, list) or not scores:
            raise ValueError(f"{path} record {rid!r}: field 'score' missing or not a non-empty list")
        for d, v in enumerate(scores):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"{path} record {rid!r}: field 'score[{d}]' is not a number: {v!r}")
            rows.append(RubricScore(model, str(rec.get("id", rid)), str(rec.get("source", "")), d, run,
                                    None if v is None else float(v)))
    return rows


def read_evaluations(paths: list[str | Path]) -> list[RubricScore]:
    rows: list[RubricScore] = []
    runs: dict[str, int] = {}
    for path in find_evaluation_files(paths):
        model = model_name(path)
        rows += read_evaluation(path, runs.get(model, 0), model)
        runs[model] = runs.get(model, 0) + 1
    return rows
