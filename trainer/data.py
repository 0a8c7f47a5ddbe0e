"""Training data in the Multifaceted Collection formats: load, normalise, validate, split.

Row kinds after normalisation:
- ``sft``:  {system, instruction, output}
- ``pair``: {system, instruction, chosen, rejected}   (DPO, ORPO and the reward model)

Accepted inputs (the released names are mapped to ours):
- local ``.jsonl`` / ``.json`` / ``.parquet`` files, or a directory of them;
- a Hub dataset id (``kaist-ai/Multifaceted-Collection-SFT`` ...), when the Hub is reachable;
- ``demo:mt_bench``: rows built from the MT-Bench answers in ``HARNESS_DATA_DIR`` (see ``demo_data``).
Field aliases: ``prompt`` -> instruction; ``response`` -> output; chosen/rejected given as message lists
(``-DPO``/``-ORPO`` releases) -> the last assistant message, with system/user taken from the list when the
row has no ``system``/``prompt``; ``input`` (``-RM`` release: ``"{system}\\n{instruction}"``) -> split at the
first newline, as JANUS builds it.

A file that is not in the format (a required field absent in a row) is an error naming the file, row and
field. Rows that are present but unusable are dropped, counted by reason and reported, never trained on:
``missing_system``, ``empty_instruction``, ``empty_response``, ``chosen_equals_rejected``, ``too_long``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.jsonl import read_jsonl

SFT = "sft"
PAIR = "pair"
KIND_FIELDS = {SFT: ("instruction", "output"), PAIR: ("instruction", "chosen", "rejected")}
DROP_REASONS = ("missing_system", "empty_instruction", "empty_response", "chosen_equals_rejected", "too_long")


class DataError(ValueError):
    """Training data that is not in the expected format."""


@dataclass
class DataConfig:
    path: str
    split: str = "train"
    eval_path: str | None = None  # a separate held-out file; else ``eval_fraction`` of ``path``
    eval_split: str | None = None
    eval_fraction: float = 0.0
    seed: int = 42
    fraction: float | None = None  # keep this share of the training rows (e.g. 1/3 for the DPO-stage SFT)
    limit: int | None = None  # keep at most this many training rows
    require_system: bool = True  # personalised data: a row without a system message is dropped

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "DataConfig":
        if not isinstance(d, dict) or "path" not in d:
            raise DataError(f"{where}: field 'data.path' is required")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"{where}: unknown field(s) data.{', data.'.join(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cls(**d)
        if not 0.0 <= cfg.eval_fraction < 1.0:
            raise DataError(f"{where}: data.eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
        if cfg.fraction is not None and not 0.0 < cfg.fraction <= 1.0:
            raise DataError(f"{where}: data.fraction must be in (0, 1], got {cfg.fraction}")
        return cfg


@dataclass
class DataReport:
    """What went into a training run; written next to the checkpoint."""

    source: str
    kind: str
    split: str
    seed: int
    rows_read: int = 0
    rows_valid: int = 0
    dropped: dict = field(default_factory=lambda: {r: 0 for r in DROP_REASONS})
    dropped_examples: dict = field(default_factory=dict)  # reason -> first few row numbers
    train_rows: int = 0
    eval_rows: int = 0
    fraction: float | None = None
    limit: int | None = None
    eval_source: str | None = None
    sha256: str | None = None
    max_length: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        bad = ", ".join(f"{k}={v}" for k, v in self.dropped.items() if v) or "none"
        return (f"{self.source}: read {self.rows_read} rows, {self.rows_valid} valid, dropped: {bad}; "
                f"train {self.train_rows}, eval {self.eval_rows} (seed {self.seed})")


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, error=DataError)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict):
            data = data.get("data", data.get("rows", list(data.values())))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a list of objects")
        return data
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json or .parquet)")


def _read_hub(name: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DataError("loading from the Hub needs `datasets`: pip install 'janus-harness[train]'") from e
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, unknown split: one clear line
        raise DataError(f"{name}: could not load split '{split}' from the Hugging Face Hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "download it elsewhere and pass a local .jsonl/.parquet path") from None
    return [dict(r) for r in ds]


def read_rows(path: str, split: str = "train") -> tuple[list[dict], str | None]:
    """Raw rows from a file, a directory, ``demo:...`` or a Hub id; plus the sha256 of local files."""
    if path.startswith("demo:"):
        from trainer.demo_data import demo_rows

        return demo_rows(path[len("demo:"):], split), None
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".jsonl", ".json", ".parquet"))
        matching = [f for f in files if split in f.stem]
        if matching:
            files = matching  # Hub-style shards: train-00000-of-00002.parquet
        elif len(files) != 1:
            # e.g. a collection build folder (sft, preference, failures): mixing them would be wrong
            names = ", ".join(f.name for f in files) or "none"
            raise DataError(f"{p}: no file named after split '{split}' in this directory (found: {names}); "
                            "pass the file itself")
    elif p.exists():
        files = [p]
    elif p.suffix.lower() in (".jsonl", ".json", ".parquet"):
        raise DataError(f"{path}: data file not found")
    elif "/" in path and not path.startswith((".", "/")) and len(path.split("/")) == 2:
        return _read_hub(path, split), None
    else:
        raise DataError(f"{path}: data file not found")
    h = hashlib.sha256()
    rows: list[dict] = []
    for f in files:
        h.update(f.read_bytes())
        rows.extend(_read_file(f))
    return rows, h.hexdigest()


# ----------------------------------------------------------------------------------------------
# normalising
# ----------------------------------------------------------------------------------------------
def _text(value: Any, where: str, name: str) -> str | None:
    """A field as text: strings pass, message lists give their last assistant message."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        msgs = list(value.tolist() if hasattr(value, "tolist") else value)
        for m in reversed(msgs):
            if isinstance(m, dict) and m.get("role") == "assistant":
                return m.get("content") or ""
        raise DataError(f"{where}: field '{name}' is a list without an assistant message")
    raise DataError(f"{where}: field '{name}' must be a string or a list of messages, got {type(value).__name__}")


def _from_messages(value: Any, role: str) -> str | None:
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        msgs = list(value.tolist() if hasattr(value, "tolist") else value)
        for m in msgs:
            if isinstance(m, dict) and m.get("role") == role:
                return m.get("content")
    return None


def normalise_row(raw: dict, kind: str, where: str) -> dict:
    """Map a released/builder row to our field names; a missing required field is an error."""
    system = raw.get("system")
    instruction = raw.get("instruction", raw.get("prompt"))
    if instruction is None and "input" in raw and system is None:
        # the -RM release joins them as JANUS does: "{system}\n{instruction}"
        joined = _text(raw["input"], where, "input") or ""
        system, _, instruction = joined.partition("\n") if "\n" in joined else ("", "", joined)
    if instruction is None or system is None:
        # the -DPO/-ORPO releases may carry system/user inside the message lists
        for key in ("chosen", "messages"):
            if key in raw:
                system = system if system is not None else _from_messages(raw[key], "system")
                instruction = instruction if instruction is not None else _from_messages(raw[key], "user")
    if instruction is None:
        raise DataError(f"{where}: missing field 'instruction' (or 'prompt')")
    if not isinstance(instruction, str):
        raise DataError(f"{where}: field 'instruction' must be a string")
    if system is not None and not isinstance(system, str):
        raise DataError(f"{where}: field 'system' must be a string")
    row = {"system": system, "instruction": instruction}
    if kind == SFT:
        out = raw.get("output", raw.get("response", raw.get("completion")))
        if out is None and "messages" in raw:
            out = _text(raw["messages"], where, "messages")
        if out is None:
            raise DataError(f"{where}: missing field 'output'")
        row["output"] = _text(out, where, "output")
    elif kind == PAIR:
        for name in ("chosen", "rejected"):
            value = raw.get(name, raw.get(f"{name}_response"))
            if value is None:
                raise DataError(f"{where}: missing field '{name}'")
            row[name] = _text(value, where, name)
    else:
        raise ValueError(f"unknown row kind '{kind}'")
    return row


def drop_reason(row: dict, kind: str, require_system: bool, length_of=None, max_length: int | None = None) -> str | None:
    """Why a normalised row must not be trained on, or None."""
    if require_system and not (row.get("system") or "").strip():
        return "missing_system"
    if not row["instruction"].strip():
        return "empty_instruction"
    responses = [row["output"]] if kind == SFT else [row["chosen"], row["rejected"]]
    if any(not (r or "").strip() for r in responses):
        return "empty_response"
    if kind == PAIR and row["chosen"].strip() == row["rejected"].strip():
        return "chosen_equals_rejected"
    if length_of is not None and max_length is not None:
        if any(length_of(row["system"], row["instruction"], r) > max_length for r in responses):
            return "too_long"
    return None


# ----------------------------------------------------------------------------------------------
# the whole step
# ----------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    train: list[dict]
    eval: list[dict]
    report: DataReport


def validate(raw_rows: list[dict], kind: str, source: str, report: DataReport, require_system: bool = True,
             length_of=None, max_length: int | None = None) -> list[dict]:
    """Normalise and filter rows, counting every dropped row in ``report``."""
    kept = []
    for n, raw in enumerate(raw_rows, 1):
        row = normalise_row(raw, kind, f"{source}: row {n}")
        reason = drop_reason(row, kind, require_system, length_of, max_length)
        if reason:
            report.dropped[reason] += 1
            report.dropped_examples.setdefault(reason, [])
            if len(report.dropped_examples[reason]) < 5:
                report.dropped_examples[reason].append(n)
            continue
        kept.append(row)
    report.rows_read += len(raw_rows)
    report.rows_valid += len(kept)
    return kept


def prepare(cfg: DataConfig, kind: str, length_of=None, max_length: int | None = None) -> PreparedData:
    """Read, validate and split the training data as ``cfg`` says."""
    raw, digest = read_rows(cfg.path, cfg.split)
    report = DataReport(source=cfg.path, kind=kind, split=cfg.split, seed=cfg.seed, fraction=cfg.fraction,
                        limit=cfg.limit, sha256=digest, max_length=max_length, eval_source=cfg.eval_path)
    rows = validate(raw, kind, cfg.path, report, cfg.require_system, length_of, max_length)
    rng = random.Random(cfg.seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    rows = [rows[i] for i in order]
    if cfg.eval_path:
        eval_raw, _ = read_rows(cfg.eval_path, cfg.eval_split or cfg.split)
        eval_rows = validate(eval_raw, kind, cfg.eval_path, report, cfg.require_system, length_of, max_length)
        train_rows = rows
    else:
        n_eval = int(round(len(rows) * cfg.eval_fraction))
        if cfg.eval_fraction > 0 and n_eval == 0 and len(rows) > 1:
            n_eval = 1
        eval_rows, train_rows = rows[:n_eval], rows[n_eval:]
    if cfg.fraction is not None:
        train_rows = train_rows[: max(1, math.ceil(len(train_rows) * cfg.fraction))]
    if cfg.limit is not None:
        train_rows = train_rows[: cfg.limit]
    if not train_rows:
        raise DataError(f"{cfg.path}: no usable training rows ({report.summary()})")
    report.train_rows, report.eval_rows = len(train_rows), len(eval_rows)
    return PreparedData(train_rows, eval_rows, report)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
