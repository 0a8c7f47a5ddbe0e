"""Dataset locations: ``HARNESS_DATA_DIR``, pulling from a local mirror, sha256 checks.

Each dataset folder carries a ``SHA256SUMS`` file (``<sha256>  <relative path>``);
``harness data pull --from DIR`` copies the folders and verifies every listed file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

#: folders no task declares: the official outputs the oracle tests compare against
EXTRA_DATASETS = ["oracles"]


def data_folders() -> list[str]:
    """The data folders: every registered task's ``data_sources`` declaration, then the extras."""
    from harness.registry import TASKS

    names: list[str] = []
    for task in TASKS.names():
        for folder in getattr(TASKS.get(task), "data_sources", ()):
            if folder not in names:
                names.append(folder)
    return names + [x for x in EXTRA_DATASETS if x not in names]


def data_dir(override: str | Path | None = None) -> Path:
    """``override`` (a config's or flag's data_dir), else ``$HARNESS_DATA_DIR``, else the user cache."""
    if override:
        return Path(override)
    env = os.environ.get("HARNESS_DATA_DIR")
    if env:
        return Path(env)
    from harness.models import cache_root

    return cache_root() / "data"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_dir(folder: Path) -> list[str]:
    """Problems found checking ``folder/SHA256SUMS`` (empty list: all good)."""
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        return []
    problems = []
    for line in sums.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, rel = line.partition("  ")
        p = folder / rel.strip()
        if not p.exists():
            problems.append(f"{p}: missing")
        elif sha256_file(p) != digest.strip():
            problems.append(f"{p}: sha256 mismatch")
    return problems


def pull(source: str | Path, dest: str | Path | None = None, datasets: list[str] | None = None) -> list[str]:
    """Copy datasets from a local mirror and verify them. Returns the folders pulled."""
    src, dst = Path(source), data_dir(dest)
    if not src.exists():
        raise FileNotFoundError(f"{src}: mirror directory not found")
    pulled = []
    for name in datasets or data_folders():
        s = src / name
        if not s.exists():
            continue
        d = dst / name
        tmp = dst / f".{name}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(s, tmp)
        problems = verify_dir(tmp)
        if problems:
            shutil.rmtree(tmp)
            raise ValueError("; ".join(problems[:5]))
        if d.exists():
            shutil.rmtree(d)
        tmp.rename(d)
        pulled.append(name)
    return pulled


def download(dest: str | Path | None = None, datasets: list[str] | None = None, timeout_s: float = 60) -> list[str]:
    """Fetch the pinned upstream files (``data_sources.yaml``) and verify each sha256.

    A file is written under its final name only after its hash matched.
    """
    import httpx
    import yaml

    sources = yaml.safe_load((Path(__file__).parent / "data_sources.yaml").read_text())
    dst = data_dir(dest)
    pulled = []
    for name, files in sources.items():
        if datasets and name not in datasets:
            continue
        for f in files:
            target = dst / name / f["path"]
            if target.exists() and sha256_file(target) == f["sha256"]:
                continue
            try:
                resp = httpx.get(f["url"], timeout=timeout_s, follow_redirects=True)
                resp.raise_for_status()
            except httpx.HTTPError as e:
                raise ValueError(f"{f['url']}: download failed ({type(e).__name__}); "
                                 f"use `harness data pull --from DIR` with a local mirror") from None
            digest = hashlib.sha256(resp.content).hexdigest()
            if digest != f["sha256"]:
                raise ValueError(f"{f['url']}: sha256 {digest} does not match the pinned {f['sha256']}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.partial")
            tmp.write_bytes(resp.content)
            tmp.rename(target)
        pulled.append(name)
    return pulled


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found (set HARNESS_DATA_DIR or run `harness data pull --from DIR`)")
    return path
