# trtllm-operator — every target sets up what it needs (virtualenv, Python deps, Go-built binaries).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?= --deployments 100
BENCH_ENGINES_ARGS ?= --engines 200 --node-change 50

.PHONY: help venv binaries lint unit test crds crds-check cluster-up cluster-down cluster-status \
	bench-cluster bench bench-engines demo demo-ci clean fuzz

help:
	@echo "make demo          the whole product on a local simulated GPU cluster (Ctrl-C stops it)"
	@echo "make demo-ci       the same, exiting 0 once every sample is Ready"
	@echo "make test          lint + every test (builds the local control plane binaries if missing)"
	@echo "make lint          ruff + mypy"
	@echo "make unit          unit tests only (no cluster)"
	@echo "make crds          regenerate crds/ from the pydantic models"
	@echo "make cluster-up    start the local simulated GPU cluster in the background"
	@echo "make cluster-down  stop it"
	@echo "make fuzz          the long property run (FUZZ_SPECS generated specs, default 10000)"
	@echo "make bench         fleet convergence: the operator next to the API server's floor"
	@echo "make bench-engines an engine fleet x 3 GPU types, then nodes joining and leaving"

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(INSTALLED)

# Pinned Kubernetes, etcd, kwok and helm, built from Go modules into ~/.cache/trtllm-operator
# (reused across clones; skipped when KUBEBUILDER_ASSETS or PATH already hold those versions).
binaries: venv
	$(BIN)/python -m trtllm_operator.localcluster binaries --timings

lint: venv
	$(BIN)/ruff check operator tests build-jobs
	$(BIN)/mypy
	$(BIN)/mypy --strict build-jobs/trtllm_jobs

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: lint binaries
	$(BIN)/pytest --durations=25 $(PYTEST_ARGS)

crds: venv
	$(BIN)/python -m trtllm_operator.crdgen --out crds
	cp crds/*.yaml charts/trtllm-operator/crds/

crds-check: venv
	$(BIN)/python -m trtllm_operator.crdgen --out crds --check

cluster-up: binaries
	$(BIN)/python -m trtllm_operator.localcluster up

cluster-down: venv
	$(BIN)/python -m trtllm_operator.localcluster down

cluster-status: venv
	$(BIN)/python -m trtllm_operator.localcluster status

demo: binaries
	$(BIN)/python -m trtllm_operator.demo $(DEMO_ARGS)

demo-ci: binaries
	$(BIN)/python -m trtllm_operator.demo --exit-when-ready --timeout 300

# Warm start-to-ready and stop times of the local cluster (a measurement, not a test).
bench-cluster: binaries
	$(BIN)/python -m trtllm_operator.localcluster bench --runs 3

# Fleet convergence, operator vs. a bare client creating the same children (a measurement,
# not a test): BENCH_ARGS="--deployments 1000 --out bench.json".
bench: binaries
	$(BIN)/python -m trtllm_operator.localcluster.bench $(BENCH_ARGS)

# The same for LLMEngines (a measurement): build Jobs per (engine, GPU type), and the writes a
# batch of nodes joining and leaving causes. Add --profile FILE to either for a py-spy record.
bench-engines: binaries
	$(BIN)/python -m trtllm_operator.localcluster.bench --modes engines $(BENCH_ENGINES_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache operator/*.egg-info

# The long property run: 10,000 generated specs against the local control plane + operator
# (about 25 minutes: the suite's 600 s per-test timeout is lifted).
fuzz: binaries
	FUZZ_SPECS=$${FUZZ_SPECS:-10000} $(BIN)/pytest tests/e2e/test_fuzz.py -x -s --timeout=0 $(PYTEST_ARGS)
