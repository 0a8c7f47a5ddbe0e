"""Where a training run writes: a staging directory beside the output, renamed into place when complete.

One code path for every method (``common.run_and_save`` and ``common.trl_args`` use it):

1. :func:`claim` (process zero, before training): refuses to replace a directory that is not a training
   output, refuses while another live run on this host stages the same output, removes what a killed run
   left (the whole staging dir: a half-saved model, TRL checkpoints), and creates
   ``<parent>/.<name>.harness-tmp/`` with ``owner.json``. TRL's ``output_dir`` is that directory, so its
   intermediate checkpoints (``save_strategy``) land there, never in the output.
2. :func:`begin_model` makes ``<staging>/model`` with the incomplete marker; the model, tokenizer, data
   report and README are saved into it; ``trainer.card.write_card`` writes the card last, listing every file
   with its size and sha256 and ``complete: true``.
3. :func:`publish` removes the marker, syncs the files, and puts the model in place: an atomic exchange of
   the two directories where the OS has it (Linux ``renameat2(RENAME_EXCHANGE)``), else the old output is
   renamed into the staging dir and the new one renamed into place (a kill between the two leaves no
   output, never a mix); then the staging dir, holding the old model and the checkpoints, is removed.

The card format and the checker live in ``harness/checkpoint.py`` (the engine must not import trainer/).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from harness.checkpoint import (CARD_JSON, INCOMPLETE_MARKER, OWNER_FILE, STAGING_MODEL, check_card_files,
                                is_complete, looks_like_training_output, owner_alive, owner_record,
                                staging_dir_for)
from harness.paths import rename_exchange


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _info(cfg) -> dict:
    return {"method": cfg.method, "config_file": cfg.source, "output_dir": str(cfg.output_dir), **owner_record(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def check_replaceable(out: Path) -> None:
    """An existing output is replaced whole: only a training output (or an empty dir) may be."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise ValueError(f"output_dir {out} exists and is not a directory")
    if any(out.iterdir()) and not looks_like_training_output(out):
        raise ValueError(f"output_dir {out} exists and is not a janus-harness training output "
                         f"(no {CARD_JSON}); the trainer replaces its output whole, so choose another "
                         "output_dir or remove it")


def claim(cfg) -> Path:
    """Process zero, before training: the staging dir of ``cfg.output_dir``, fresh and owned by this run."""
    out = Path(cfg.output_dir)
    staging = staging_dir_for(out)
    check_replaceable(out)
    owner = owner_alive(staging)
    if owner and int(owner["pid"]) != os.getpid():
        raise ValueError(f"output_dir {out}: another training run (pid {owner['pid']}, started "
                         f"{owner.get('started')}) is writing it; wait for it or stop it")
    if staging.exists() or staging.is_symlink():
        if not staging.is_dir() or any(staging.iterdir()):  # TRL's Trainer creates it empty: not worth a line
            print(f"[train] removing {staging}, left by an interrupted run", flush=True)
        _remove(staging)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    _write_json(staging / OWNER_FILE, _info(cfg))
    return staging


def begin_model(cfg, staging: Path) -> Path:
    """The directory the model is saved into, marked incomplete until its card is written."""
    model = staging / STAGING_MODEL
    if model.exists():
        _remove(model)
    model.mkdir(parents=True)
    _write_json(model / INCOMPLETE_MARKER, _info(cfg))
    return model


def publish(model: Path, out: Path) -> Path:
    """Put the complete staged ``model`` at ``out`` (see the module docstring), then remove the staging dir."""
    staging = model.parent
    check_card_files(model)  # the card is written, last, and describes what is there
    (model / INCOMPLETE_MARKER).unlink(missing_ok=True)
    _fsync_tree(model)
    if out.exists() or out.is_symlink():
        if not rename_exchange(model, out):
            previous = staging / "previous"
            _move_aside(out, previous)
            try:
                os.rename(model, out)
            except BaseException:
                os.rename(previous, out)  # put the old model back rather than lose it with the staging dir
                raise
    else:
        os.rename(model, out)
    _fsync_dir(out.parent)
    _remove(staging)
    _fsync_dir(out.parent)
    return out


def _move_aside(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root``, so the rename never publishes unwritten data."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(root)


# ----------------------------------------------------------------------------------------------
# what makes two runs the same, for --skip-if-complete
# ----------------------------------------------------------------------------------------------
def _data_digest(path: str | None, split: str | None) -> str | None:
    if not path or path.startswith("demo:") or not Path(os.path.expanduser(path)).exists():
        return None  # demo rows, Hub ids: recorded by name only
    from trainer.data import read_rows

    return read_rows(path, split or "train")[1]


def config_fingerprint(cfg) -> str:
    """sha256 over everything that decides the trained model: the config (not its file name, output dir or
    thread count), the data files' contents, and the base model's card if it is a training output."""
    d = cfg.to_dict()
    for key in ("source", "output_dir", "threads"):
        d.pop(key, None)
    d["data_sha256"] = _data_digest(cfg.data.path, cfg.data.split)
    d["eval_data_sha256"] = _data_digest(cfg.data.eval_path, cfg.data.eval_split or cfg.data.split)
    base_card = Path(os.path.expanduser(cfg.model)) / CARD_JSON
    d["base_card_sha256"] = hashlib.sha256(base_card.read_bytes()).hexdigest() if base_card.is_file() else None
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def up_to_date(cfg) -> bool:
    """True when ``cfg.output_dir`` is a complete training output trained with this very config."""
    out = Path(cfg.output_dir)
    if not is_complete(out):
        return False
    try:
        card = json.loads((out / CARD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return card.get("method") == cfg.method and card.get("config_fingerprint") == config_fingerprint(cfg)
