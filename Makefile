# Two commands do all the set-up: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart study-quickstart dycoke-quickstart test test-fast lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[video,ray,lmms,lm,dev]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	WANDB_MODE=offline $(BIN)/lightning-prune fit --config configs/quickstart.yaml

study-quickstart: $(STAMP)
	WANDB_MODE=offline $(BIN)/lightning-prune study --config configs/study/quickstart.yaml

dycoke-quickstart: $(STAMP)
	WANDB_MODE=offline $(BIN)/lightning-prune predict --config configs/dycoke/tiny.yaml

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest tests -n 2

# Everything but the tests marked slow (gloo ranks, spawned workers, the Ray cluster, lmms-eval / lm-eval harness runs).
test-fast: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest tests -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

# The benchmarks that need no dataset on disk (minutes on a CPU); each writes its figures to $(BENCH_OUT).
# benchmarks/train_throughput.py needs the full MNIST: run it by hand with --root.
BENCH_OUT ?= benchmarks/results
bench: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(BIN)/python benchmarks/study_throughput.py --json $(BENCH_OUT)/study_throughput_cpu.json
	$(BIN)/python benchmarks/criteria_cost.py --threads 1 --json $(BENCH_OUT)/criteria_cost_cpu.json
	$(BIN)/python benchmarks/dycoke.py --json $(BENCH_OUT)/dycoke_cpu.json
