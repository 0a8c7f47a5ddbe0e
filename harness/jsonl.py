"""Reading JSONL files with errors that name the file, the line and the field."""
from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, required: tuple[str, ...] = (), error: type[Exception] = ValueError) -> list[dict]:
    """Objects of a JSONL file. A bad line (often a truncated last line), a non-object or a
    missing required field raises ``error`` with one message naming the file and line."""
    rows = []
    if Path(path).is_dir():
        raise error(f"{path}: expected a JSONL file, got a directory")
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")  # not splitlines: JSON may hold U+2028
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}: line {n} is not valid JSON ({e.msg}); the file may be truncated") from None
        if not isinstance(obj, dict):
            raise error(f"{path}: line {n} is not a JSON object")
        for field in required:
            if field not in obj:
                raise error(f"{path}: line {n}: missing field '{field}'")
        rows.append(obj)
    return rows
