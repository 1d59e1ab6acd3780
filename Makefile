# cnnlab: `make help` lists the targets. Extra arguments go through ARGS="...".
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: help install test test-fast fit lint bench bench-gpu

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo '  make ablation-NAME  one spec in full, NAME one of: $(SPECS)'

install: $(STAMP) ## create .venv and install cnnlab with its dev tools (idempotent)

# Without an NVIDIA GPU (no working nvidia-smi), torch and torchvision come from PyTorch's CPU wheel
# index: no CUDA libraries, no triton (a 1.8 GB venv instead of 6.2 GB). TORCH_INDEX= (empty)
# installs the default CUDA wheels anyway; an index that does not answer within 5 s falls back
# to them, with a line saying so.
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_INDEX ?= $(if $(GPU),,https://download.pytorch.org/whl/cpu)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ -n "$(TORCH_INDEX)" ]; then \
	  if $(PY) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
	      "$(TORCH_INDEX)/torch/" 2>/dev/null; then \
	    echo "make install: no NVIDIA GPU: CPU-only torch and torchvision from $(TORCH_INDEX)"; \
	    $(PY) -m pip install --quiet --index-url "$(TORCH_INDEX)" 'torch<=2.14.1' 'torchvision<=0.29.1'; \
	  else \
	    echo "make install: no NVIDIA GPU, but $(TORCH_INDEX) did not answer: torch from the default index (with its CUDA libraries)"; \
	  fi; \
	fi
	$(PY) -m pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

# Two pytest workers (pytest-xdist) keep both cores of a 2-core machine busy; the fast subset
# is quicker in one process (each worker pays its own imports and PostgreSQL cluster).
test: install ## run the test suite
	$(PY) -m pytest -n 2 --dist worksteal

test-fast: install ## the suite without the tests marked slow (whole commands, kills, calibration)
	$(PY) -m pytest -m "not slow"

fit: install ## train the digits baseline into runs/fit (ARGS="model.norm=layer ...")
	$(VENV)/bin/cnnlab fit --out runs/fit --overwrite $(ARGS)

lint: install ## ruff over the code, tests and benchmarks; mypy over cnnlab/
	$(VENV)/bin/ruff check cnnlab tests benchmarks
	$(VENV)/bin/mypy

bench: install ## ratio benchmarks, each against a baseline run side by side
	$(PY) -m benchmarks

bench-gpu: install ## the CIFAR-10 fast preset on this machine's GPU (synthetic data; ARGS="--data-root DIR")
	$(PY) -m benchmarks --gpu $(ARGS)

# Every experiments/*.yaml is an ablation spec except search.yaml (make tune).
SPECS := $(filter-out search,$(basename $(notdir $(wildcard experiments/*.yaml))))
.PHONY: ablation ablation-summary $(addprefix ablation-,$(SPECS))

ablation: install ## every ablation spec in its quick preset (reports/<name>-quick/)
	$(VENV)/bin/cnnlab ablate $(foreach s,$(sort $(SPECS)),experiments/$(s).yaml) --quick $(ARGS)

ablation-summary: install ## the verdicts of make ablation's studies as one markdown table
	$(VENV)/bin/cnnlab report --summary $(foreach s,$(sort $(SPECS)),$(s)-quick)

$(addprefix ablation-,$(SPECS)): ablation-%: install
	$(VENV)/bin/cnnlab ablate experiments/$*.yaml $(ARGS)

.PHONY: tune
tune: install ## cross-validated Optuna search (experiments/search.yaml), refit, test (reports/search/)
	$(VENV)/bin/cnnlab tune experiments/search.yaml $(ARGS)
