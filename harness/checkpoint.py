"""Checkpoints written by ``harness train``: the card format and the completeness check.

This module owns the format of ``harness_card.json`` as far as completeness goes; ``trainer/card.py``
writes cards with these constants, and the engine calls :func:`verify_checkpoint` before it loads a local
model, without importing ``trainer/``.

How a training run saves (``trainer/output.py``): everything goes into a staging directory beside the
output, ``<parent>/.<name>.harness-tmp/`` (TRL's intermediate checkpoints in it, the model in its
``model/`` subdirectory, with an :data:`INCOMPLETE_MARKER` file from the start); the card is written
last and lists every file of the model with its size and sha256, with ``"complete": true``; only then is
the staging model renamed into place, so ``<parent>/<name>`` is either the previous complete model or the
new complete one. A kill leaves the staging directory, which the next run of the same output removes.

``verify_checkpoint`` refuses, with one line that says to rerun the training:

- a directory with a card that is not complete (no ``complete: true`` and file list, e.g. a card from
  before atomic saves that may sit beside newer weights), or whose listed files are missing or have
  another size (or, with ``deep=True``, another sha256), or that holds weight files the card does not list;
- a directory that looks like a harness training output but has no card (the marker or a
  ``data_report.json`` without ``harness_card.json``);
- a staging directory, and a missing output whose staging directory is still there.

Plain transformers directories without a card (a user's checkpoint, the embedded model) pass.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

CARD_JSON = "harness_card.json"
CARD_FORMAT = 1                     # the version of the completeness fields below
CARD_FORMAT_KEY = "card_format"
COMPLETE_KEY = "complete"           # true only in a card written after every other file
FILES_KEY = "files"                 # {relative posix path: {"size": bytes, "sha256": hex}}, every file but the card
INCOMPLETE_MARKER = ".harness-incomplete"  # in a staging model directory until its card is written
STAGING_SUFFIX = ".harness-tmp"     # <parent>/.<name>.harness-tmp beside the output <parent>/<name>
STAGING_MODEL = "model"             # the model being saved: <staging>/model
OWNER_FILE = "owner.json"           # <staging>/owner.json: host and pid of the run using the staging dir
DATA_REPORT = "data_report.json"    # written by the trainer only
# files whose presence without a card entry means weights that the card does not describe
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5")


def staging_dir_for(out: str | Path) -> Path:
    """The staging directory of training output ``out``: ``<parent>/.<name>.harness-tmp``."""
    out = Path(out)
    return out.parent / f".{out.name}{STAGING_SUFFIX}"


def output_for_staging(staging: str | Path) -> Path | None:
    """The output a staging directory belongs to, or None if ``staging`` is not named like one."""
    staging = Path(staging)
    name = staging.name
    if name.startswith(".") and name.endswith(STAGING_SUFFIX) and len(name) > len(STAGING_SUFFIX) + 1:
        return staging.parent / name[1:-len(STAGING_SUFFIX)]
    return None


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def list_files(model_dir: str | Path, sha256: bool = True) -> dict[str, dict]:
    """Every file under ``model_dir`` but the card and the marker, for the card's :data:`FILES_KEY`."""
    root = Path(model_dir)
    out: dict[str, dict] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or (p.parent == root and p.name in (CARD_JSON, INCOMPLETE_MARKER)):
            continue
        entry = {"size": p.stat().st_size}
        if sha256:
            entry["sha256"] = file_sha256(p)
        out[p.relative_to(root).as_posix()] = entry
    return out


def read_card(model_dir: str | Path) -> dict | None:
    """The card as written, or None without one (no completeness check: see :func:`verify_checkpoint`)."""
    path = Path(model_dir) / CARD_JSON
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_record() -> dict:
    """Who is writing: for a staging dir's owner file (see :func:`owner_alive`)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start(os.getpid())}


def owner_alive(staging: str | Path) -> dict | None:
    """The owner record of a staging directory if that process still runs on this host, else None."""
    owner = _read_json(Path(staging) / OWNER_FILE)
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if owner.get("host") != socket.gethostname():
        return None  # unknowable from here; a run of the same output from another host is not supported
    if pid == os.getpid():
        return owner
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    started = owner.get("process_start")
    if started and process_start(pid) not in (None, started):
        return None  # the pid now belongs to another process
    return owner


def _rerun(info: dict | None, out: Path | str) -> str:
    info = info or {}
    method, config = info.get("method"), info.get("config_file")
    if method and config and str(config).endswith((".yaml", ".yml", ".json")):
        return f"harness train {method} --config {config}"
    return f"harness train {method or '<method>'} --config <file> (output_dir {out})"


def _incomplete(path, reason: str, info: dict | None = None, out=None) -> ValueError:
    return ValueError(f"{path}: incomplete checkpoint: {reason}; rerun `{_rerun(info, out or path)}`")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def looks_like_training_output(path: str | Path) -> bool:
    """True for a directory ``harness train`` wrote (or was writing), card or not."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / CARD_JSON).exists() or (p / INCOMPLETE_MARKER).exists() or (p / DATA_REPORT).exists():
        return True
    return output_for_staging(p) is not None or output_for_staging(p.parent) is not None


def verify_checkpoint(path: str | Path, deep: bool = False) -> None:
    """Raise ``ValueError("<path>: incomplete checkpoint: ...; rerun `harness train ...`")`` for a training
    output that is not complete; return None for a complete one and for anything that is not a training
    output (a plain transformers directory, a Hub id, a path that does not exist and never was trained to).

    Sizes are checked always; ``deep=True`` also checks every file's sha256 (reads all the weights)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        staging = staging_dir_for(p)
        if staging.is_dir():
            info = _read_json(staging / STAGING_MODEL / INCOMPLETE_MARKER) or _read_json(staging / OWNER_FILE)
            running = owner_alive(staging)
            why = (f"training into it is still running (pid {running['pid']})" if running else
                   f"a training run into it was interrupted before it finished (leftover {staging})")
            raise _incomplete(path, why, info)
        return None
    if not p.is_dir() or not looks_like_training_output(p):
        return None
    out_of = output_for_staging(p) or output_for_staging(p.parent)
    if out_of is not None:
        staging = p if output_for_staging(p) else p.parent
        info = _read_json(staging / STAGING_MODEL / INCOMPLETE_MARKER) or _read_json(staging / OWNER_FILE)
        raise _incomplete(path, f"this is the staging directory of a training run into {out_of}, "
                                "not a finished model; use that directory", info, out_of)
    if (p / INCOMPLETE_MARKER).exists():
        raise _incomplete(path, f"a save into it did not finish ({INCOMPLETE_MARKER} is present)",
                          _read_json(p / INCOMPLETE_MARKER))
    check_card_files(p, deep=deep, label=path)


def check_card_files(model_dir: str | Path, deep: bool = False, label=None) -> dict:
    """The card of ``model_dir`` records a complete save and every file matches it; returns the card.

    Raises the ``incomplete checkpoint`` ValueError otherwise (``label`` names the directory in it)."""
    p = Path(model_dir)
    path = p if label is None else label
    card_path = p / CARD_JSON
    if not card_path.exists():
        raise _incomplete(path, f"{CARD_JSON} is missing (the save did not finish)")
    card = _read_json(card_path)
    if card is None:
        raise _incomplete(path, f"{CARD_JSON} is not a valid JSON object")
    fmt = card.get(CARD_FORMAT_KEY)
    if isinstance(fmt, int) and fmt > CARD_FORMAT:
        raise ValueError(f"{path}: checkpoint card format {fmt} is newer than this janus-harness reads "
                         f"({CARD_FORMAT}); upgrade janus-harness")
    files = card.get(FILES_KEY)
    if card.get(COMPLETE_KEY) is not True or fmt is None or not isinstance(files, dict) or not files:
        raise _incomplete(path, f"{CARD_JSON} does not record a complete save (no '{COMPLETE_KEY}: true' and "
                                "file list: an interrupted save, or a card from before atomic saves that may "
                                "sit beside other weights)", card)
    for rel, entry in sorted(files.items()):
        f = p / rel
        if not f.is_file():
            raise _incomplete(path, f"{rel} is listed in {CARD_JSON} but missing", card)
        size = entry.get("size") if isinstance(entry, dict) else None
        if size is not None and f.stat().st_size != size:
            raise _incomplete(path, f"{rel} has {f.stat().st_size} bytes, {CARD_JSON} says {size}", card)
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if deep and digest and file_sha256(f) != digest:
            raise _incomplete(path, f"{rel} does not match the sha256 in {CARD_JSON}", card)
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p).as_posix()
        if f.is_file() and rel not in files and (f.suffix in WEIGHT_SUFFIXES or f.name.endswith(".index.json")):
            raise _incomplete(path, f"{rel} is not listed in {CARD_JSON} (weights written after the card?)", card)
    return card


def is_complete(path: str | Path, deep: bool = False) -> bool:
    """True for a complete training output (a card that verifies); False otherwise, plain dirs included."""
    p = Path(os.path.expanduser(str(path)))
    if not (p / CARD_JSON).is_file():
        return False
    try:
        verify_checkpoint(p, deep=deep)
    except ValueError:
        return False
    return True
