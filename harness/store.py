"""The run directory: durable, resumable, exportable.

Records live in SQLite (WAL mode). Each write is its own transaction, so a process
killed mid-run loses at most the record being written, never corrupts earlier ones,
and never leaves a half line (the failure mode of append-only JSONL). The primary key
is the record's content key, so rerunning a step cannot duplicate a record.
"""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from harness.records import RECORD_TYPES, Record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    task TEXT,
    model TEXT,
    status TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, task, model);
"""


def _status(rec: Record) -> str:
    for attr in ("status", "parse_status"):
        if hasattr(rec, attr):
            return getattr(rec, attr)
    return "ok"


class RunStore:
    """Records of one run, keyed by content."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "run.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is crash-safe in WAL mode for process kills (only power loss can drop
        # the last commits); FULL would fsync every record.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- writing
    def put(self, rec: Record) -> None:
        self.put_many([rec])

    def put_many(self, recs: Iterable[Record]) -> None:
        rows = [(r.key, r.kind, getattr(r, "task", None), getattr(r, "model", None), _status(r),
                 json.dumps(r.to_dict(), ensure_ascii=False)) for r in recs]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?)", rows)
            self._db.execute("COMMIT")

    # -- reading
    def has(self, key: str, ok_only: bool = True) -> bool:
        q = "SELECT status FROM records WHERE key=?"
        with self._lock:
            row = self._db.execute(q, (key,)).fetchone()
        return row is not None and (not ok_only or row[0] == "ok")

    def keys(self, kind: str, ok_only: bool = True) -> set[str]:
        q = "SELECT key, status FROM records WHERE kind=?"
        with self._lock:
            rows = self._db.execute(q, (kind,)).fetchall()
        return {k for k, s in rows if not ok_only or s == "ok"}

    def get(self, kind: str, key: str) -> Record | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM records WHERE key=? AND kind=?", (key, kind)).fetchone()
        return RECORD_TYPES[kind].from_dict(json.loads(row[0])) if row else None

    def all(self, kind: str, task: str | None = None, model: str | None = None) -> list[Record]:
        return list(self.iter(kind, task, model))

    def iter(self, kind: str, task: str | None = None, model: str | None = None) -> Iterator[Record]:
        q, args = "SELECT data FROM records WHERE kind=?", [kind]
        if task is not None:
            q, args = q + " AND task=?", args + [task]
        if model is not None:
            q, args = q + " AND model=?", args + [model]
        q += " ORDER BY rowid"
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        cls = RECORD_TYPES[kind]
        for (data,) in rows:
            yield cls.from_dict(json.loads(data))

    def count(self, kind: str, status: str | None = None) -> int:
        q, args = "SELECT COUNT(*) FROM records WHERE kind=?", [kind]
        if status:
            q, args = q + " AND status=?", args + [status]
        with self._lock:
            return self._db.execute(q, args).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file and rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
