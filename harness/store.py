"""The run directory: durable, resumable, exportable.

Records live in SQLite (WAL mode). Each write is its own transaction, so a process
killed mid-run loses at most the record being written, never corrupts earlier ones,
and never leaves a half line (the failure mode of append-only JSONL). The primary key
is the record's content key, so rerunning a step cannot duplicate a record.

Inside ``grouped_writes()`` (the call layer opens one around the callbacks of the calls
that finished in one event-loop turn) the writes of each store are held and committed
together, in one transaction, when the block ends: one commit instead of one per record.
The block is synchronous, so nothing outside it sees a held write before it commits.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import re
import sqlite3
import threading
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from harness.paths import TEMP_TOKEN_CHARS, make_temp_file
from harness.records import RECORD_TYPES, Record, stable_hash

# 2: content-chained keys (instance content hash in every key), heads, prompt blobs
SCHEMA_VERSION = "2"

# the meta table first: a store that has it is of this format, whatever else got created
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    task TEXT,
    model TEXT,
    status TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, task, model);
-- which records the latest step of each kind made current (see RunStore.set_head)
CREATE TABLE IF NOT EXISTS heads (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- judge prompts, stored once by content hash (zlib-compressed JSON)
CREATE TABLE IF NOT EXISTS blobs (ref TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


class _Group:
    """The writes held by one ``grouped_writes`` block: store -> its write functions, in order."""

    def __init__(self):
        self.writes: dict = {}
        self.open = True


_GROUP: contextvars.ContextVar[_Group | None] = contextvars.ContextVar("harness_store_group", default=None)


@contextlib.contextmanager
def grouped_writes():
    """Hold the ``RunStore`` writes made inside the block and commit them per store in one
    transaction at its end (nested blocks join the outer one). Reads inside the block see
    only committed records. A failed commit raises StoreError and writes none of the group."""
    outer = _GROUP.get()
    if outer is not None and outer.open:
        yield
        return
    group = _Group()
    token = _GROUP.set(group)
    try:
        yield
    finally:
        _GROUP.reset(token)
        group.open = False  # a task created inside the block inherits the context: it writes directly
        for store, fns in group.writes.items():  # also on an exception: what finished is kept
            store._write(lambda db, fns=fns: [fn(db) for fn in fns])


class StoreError(ValueError):
    """A run directory that cannot be used as it is (old format, unwritable, full disk)."""


def _status(rec: Record) -> str:
    for attr in ("status", "parse_status"):
        if hasattr(rec, attr):
            return getattr(rec, attr)
    return "ok"


def _fields(rec: Record) -> dict:
    """``rec.to_dict()`` without its deep copy (most of a record write's CPU for a judge prompt):
    the dict is serialized at once, by ``_json``, which turns nested dataclasses into dicts."""
    if type(rec).to_dict is not Record.to_dict:
        return rec.to_dict()
    return {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}


def _plain(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_plain)


class RunStore:
    """Records of one run, keyed by content."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.path = self.dir / "run.sqlite"
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._check_version()  # before anything writes: an old store is left exactly as it was
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is crash-safe in WAL mode for process kills (only power loss can drop
            # the last commits); FULL would fsync every record.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._create()
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.path}: cannot open the run store: {e}") from None

    def _create(self) -> None:
        """Tables and the format version in one transaction: a full disk leaves all or nothing."""
        self._db.execute("BEGIN")
        try:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(stmt)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def _check_version(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "records" not in tables:
            return
        version = None  # no meta table: written before store formats were versioned
        if "meta" in tables:  # created first, in the same transaction as the version row
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = row[0] if row else SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.dir}: written by an older harness (store format {version or 1}, record keys "
                             f"without content hashes); its records cannot be mixed with new ones: run into a "
                             f"new directory (--out) or delete this one")

    # -- writing
    def put(self, rec: Record) -> None:
        self.put_many([rec])

    def put_many(self, recs: Iterable[Record]) -> None:
        rows, blobs = [], {}
        for r in recs:
            d = _fields(r)
            if d.get("prompt") is not None:  # a judge prompt: kept once, by hash
                ref = stable_hash(d["prompt"], 32)
                blobs[ref] = d.pop("prompt")
                d["prompt"], d["prompt_ref"] = None, ref
            rows.append((r.key, r.kind, getattr(r, "task", None), getattr(r, "model", None), _status(r), _json(d)))
        if not rows:
            return
        packed = [(ref, zlib.compress(_json(v).encode("utf-8"))) for ref, v in blobs.items()]
        self._write(lambda db: (db.executemany("INSERT OR IGNORE INTO blobs VALUES (?,?)", packed),
                                db.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?)", rows)))

    def _write(self, fn) -> None:
        group = _GROUP.get()
        if group is not None and group.open:
            group.writes.setdefault(self, []).append(fn)
            return
        with self._lock:
            write_transaction(self._db, fn, f"{self.path}: cannot write the run store")

    def judge_prompt(self, rec) -> list[dict] | None:
        """The full prompt a judgment was sent with."""
        if rec.prompt is not None or not rec.prompt_ref:
            return rec.prompt
        with self._lock:
            row = self._db.execute("SELECT data FROM blobs WHERE ref=?", (rec.prompt_ref,)).fetchone()
        return json.loads(zlib.decompress(row[0])) if row else None

    # -- heads: what the latest build/generate/judge step made current
    def set_current_instances(self, task: str, keys: list[str]) -> None:
        self.set_head(f"instances/{task}", keys)

    def set_current_generation(self, task: str, model: str, gen_hash: str) -> None:
        self.set_head(f"generation/{task}/{model}", {"gen_hash": gen_hash})

    def current_generation(self, task: str, model: str) -> str | None:
        """The generation-config hash of a model's latest generate (or rerank) step."""
        head = self.head(f"generation/{task}/{model}")
        return head["gen_hash"] if head else None

    def set_current_judge(self, task: str, judge: str, judge_hash: str) -> None:
        self.set_head(f"judge/{task}", {"judge": judge, "hash": judge_hash})

    def set_head(self, key: str, value) -> None:
        blob = json.dumps(value, sort_keys=True)
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO heads VALUES (?,?)", (key, blob)))

    def head(self, key: str):
        with self._lock:
            row = self._db.execute("SELECT value FROM heads WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def current_instances(self, task: str) -> list:
        """The instances of a task's latest build (every stored one where no build set a head)."""
        keys = self.head(f"instances/{task}")
        wanted = set(keys) if keys is not None else None
        return [i for i in self.iter("instance", task=task) if wanted is None or i.key in wanted]

    def current_completions(self, task: str, ok_only: bool = True, instances: list | None = None) -> list:
        """Completions of the current instances (``instances``, if already read) under each model's
        latest generation config."""
        current = {i.key for i in (self.current_instances(task) if instances is None else instances)}
        gen_hash: dict[str, str | None] = {}
        out = []
        for c in self.iter("completion", task=task):
            if c.model not in gen_hash:
                gen_hash[c.model] = self.current_generation(task, c.model)
            reachable = c.instance_key in current and c.gen_config_hash == gen_hash[c.model]
            if reachable and (c.status == "ok" or not ok_only):
                out.append(c)
        return out

    def current(self, task: str) -> tuple[list, list, list, list]:
        """(instances, completions, judgments, scores) reachable from the heads: what aggregation,
        export and reports read. Judgments of the latest judge config of ok completions only."""
        instances = self.current_instances(task)
        comps = self.current_completions(task, ok_only=False, instances=instances)
        ok = {c.key for c in comps if c.status == "ok"}
        head = self.head(f"judge/{task}")
        judgments = [] if head is None else [
            j for j in self.iter("judgment", task=task)
            if j.completion_key in ok and j.judge == head["judge"] and j.judge_config_hash == head["hash"]]
        scores = [s for s in self.iter("score", task=task) if s.completion_key in ok]
        return instances, comps, judgments, scores

    def merge_heads_and_blobs(self, part: "RunStore") -> None:
        """Take in a shard's heads and judge prompts: instance heads are the union of the shards'
        parts; the generation and judge heads are the same in every shard of one config."""
        with part._lock:
            heads = part._db.execute("SELECT key, value FROM heads").fetchall()
            blobs = part._db.execute("SELECT ref, data FROM blobs").fetchall()
        for key, value in heads:
            value = json.loads(value)
            if key.startswith("instances/"):
                value = sorted(set(self.head(key) or []) | set(value))
            self.set_head(key, value)
        self._write(lambda db: db.executemany("INSERT OR IGNORE INTO blobs VALUES (?,?)", blobs))

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
    """Write via a temp file and rename: readers never see a half-written file. The file gets the
    mode any new file gets (0o666 less the umask), not mkstemp's 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a full disk at write/fsync: name the file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_transaction(db: sqlite3.Connection, fn, what: str) -> None:
    """``fn(db)`` in one transaction; a full or read-only disk becomes a StoreError saying ``what``."""
    try:
        db.execute("BEGIN")
        fn(db)
        db.execute("COMMIT")
    except sqlite3.Error as e:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise StoreError(f"{what}: {e}") from None


# ``.<name>.<token>``: the names atomic_write_text gives its temp files (harness.paths.make_temp_file)
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{%d}" % TEMP_TOKEN_CHARS)


def remove_stale_temp_files(root: str | Path) -> list[Path]:
    """Temp files of ``atomic_write_text`` that a killed process left under ``root``.

    Call only while holding the run lock: no live writer can own them then.
    """
    stale = [p for p in Path(root).rglob(".*") if p.is_file() and _TEMP_NAME.fullmatch(p.name)]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
