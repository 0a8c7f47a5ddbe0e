"""The official Multifaceted Bench release: from the Hub when reachable, or a local file.

``kaist-ai/Multifaceted-Bench`` lives only on the Hugging Face Hub. A local copy may be
JSONL, JSON (a list or an id->record dict, as JANUS's loader accepts) or parquet. Every
record is validated (both ``rubric`` and ``rubrics`` spellings) before it becomes an
``Instance``; one bad record stops the load with its file, line and field.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.records import Instance
from tasks.multifaceted.schema import SchemaError, validate_bench_record

HUB_NAME = "kaist-ai/Multifaceted-Bench"
TASK_NAME = "multifaceted_bench"


def _read_records(path: Path) -> list[tuple[str, dict]]:
    """(location, record) pairs from a local file; location names file and line/index."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: bench file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append((f"{path} line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise SchemaError(f"{path} line {n}: not valid JSON ({e.msg}); truncated file?") from e
        return out
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SchemaError(f"{path}: not valid JSON ({e.msg})") from e
        if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()) and "prompt" not in data:
            return [(f"{path} record {k!r}", {"id": v.get("id", k), **v}) for k, v in data.items()]
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise SchemaError(f"{path}: expected a list of records, got {type(data).__name__}")
        return [(f"{path} record {i}", r) for i, r in enumerate(data)]
    if suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        return [(f"{path} row {i}", _plain(r)) for i, r in enumerate(frame.to_dict(orient="records"))]
    raise SchemaError(f"{path}: unsupported bench file type {suffix!r} (use .jsonl, .json or .parquet)")


def _plain(obj):
    """numpy arrays / scalars from parquet -> plain lists / Python values."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _read_hub(name: str, split: str) -> list[tuple[str, dict]]:
    try:
        from datasets import load_dataset

        ds = load_dataset(name, split=split)
    except Exception as e:  # offline, missing package, unknown dataset
        raise RuntimeError(f"cannot load {name!r} (split {split!r}) from the Hugging Face Hub: {e}. "
                           "Pass a local file (.jsonl/.json/.parquet) instead.") from e
    return [(f"{name}[{split}] row {i}", _plain(dict(r))) for i, r in enumerate(ds)]


def load_release_records(source: str | Path = HUB_NAME, split: str = "test",
                         n_rubrics: int | None = 4) -> list[dict]:
    """Validated, normalised records (``rubrics`` key) from a local file or the Hub."""
    path = Path(source)
    located = _read_records(path) if path.suffix or path.exists() else _read_hub(str(source), split)
    if not located:
        raise SchemaError(f"{source}: no records")
    return [validate_bench_record(rec, where, n_rubrics) for where, rec in located]


def record_to_instance(record: dict, index: int, path: str = "", task: str = TASK_NAME) -> Instance:
    """One bench record (released or built) -> Instance. ``id`` falls back to the row index."""
    rec = validate_bench_record(record, f"{path} record {index}", n_rubrics=None)
    meta = {k: v for k, v in rec.items()
            if k not in ("id", "source", "system", "prompt", "reference_answer", "rubrics")}
    return Instance(task=task, id=str(rec.get("id", index)), turns=[rec["prompt"]], source=rec.get("source", ""),
                    system=rec["system"], reference=[rec["reference_answer"]], rubrics=rec["rubrics"],
                    category=rec.get("source", ""), metadata=meta)


def load_instances(source: str | Path = HUB_NAME, split: str = "test", n_rubrics: int | None = 4,
                   task: str = TASK_NAME) -> list[Instance]:
    records = load_release_records(source, split, n_rubrics)
    instances = [record_to_instance(r, i, str(source), task) for i, r in enumerate(records)]
    seen: dict[str, int] = {}
    for i, inst in enumerate(instances):
        if inst.id in seen:
            raise SchemaError(f"{source} record {i}: field 'id': duplicate id {inst.id!r} (also record {seen[inst.id]})")
        seen[inst.id] = i
    return instances
