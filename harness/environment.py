"""What a run records about the machine and packages it ran on (``environment.json``)."""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ["janus-harness", "torch", "transformers", "openai", "numpy", "pandas", "scipy", "scikit-learn",
            "trl", "peft", "vllm", "alpaca-eval", "detoxify", "lm-eval", "langdetect", "nltk", "xgrammar"]


def environment() -> dict:
    versions = {}
    for p in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[p] = metadata.version(p)
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_commit": commit, "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
