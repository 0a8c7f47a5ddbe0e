"""Run stores in shapes a user may hand the harness."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def write_old_format_store(run_dir: Path) -> Path:
    """A run.sqlite as harnesses before chained keys wrote it: a records table, no meta table."""
    run_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(run_dir / "run.sqlite")
    db.executescript("CREATE TABLE records (key TEXT PRIMARY KEY, kind TEXT NOT NULL, task TEXT, model TEXT, "
                     "status TEXT, data TEXT NOT NULL);")
    db.execute("INSERT INTO records VALUES ('mt_bench/81', 'instance', 'mt_bench', NULL, 'ok', '{}')")
    db.commit()
    db.close()
    return run_dir
