# Two commands on a fresh CPU machine: `make run` and `make test` (each installs what it needs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Exact CPU versions (torch 2.13.0 CPU build). On a GPU machine install with pip yourself and
# keep your CUDA torch: `pip install -e '.[dev]'` (pyproject holds ranges only).
CONSTRAINTS ?= constraints-cpu.txt
STAMP := $(VENV)/.attnbench-installed
ARGS ?=

.PHONY: install run test test-fast test-slow bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev,xformers,sweep,alloc]'
	touch $(STAMP)

install: $(STAMP)

# The main job on a small default (attnbench/conf/bench.yaml): every variant, n = 512..2048.
# The table goes to stdout, progress to stderr: `make run > summary.txt` keeps the table.
run: $(STAMP)
	@$(BIN)/python -m attnbench run $(ARGS)

# Fast tests first, then the slow ones (FlexAttention compiles, worker sweeps).
test: test-fast test-slow

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not cuda and not bench"
	$(BIN)/python -m pytest -q tests/bench --benchmark-disable

# pytest-benchmark timings of every variant (docs/regression.md), e.g.
# make bench ARGS="--bench-size big --benchmark-autosave"
bench: $(STAMP)
	$(BIN)/python -m pytest tests/bench $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not cuda"

clean:
	rm -rf $(VENV) .pytest_cache

# Our kernels side by side with the public peers (issue 15, scripts/peers.py): the peers go into
# their own venv with the same constraints (torch stays pinned), then the run, e.g.
# make peers ARGS="--seq-lens 4096 --only bigbird"; results/cpu-epyc-2core/peers/ + its report.
PEERS_VENV ?= .venv-peers
.PHONY: peers
peers:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e . -r scripts/peers-requirements.txt
	$(PEERS_VENV)/bin/python scripts/peers.py $(ARGS)
