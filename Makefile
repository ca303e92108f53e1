# fleet-limiter developer entry points. `make run` and `make test` are the two set-up commands:
# both create the virtualenv and install what they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python -P
STAMP := $(VENV)/.installed
POLICY ?= examples/production.yaml
INSTANCES ?= 3

.PHONY: all venv test test-unit test-long lint fmt run run-local plan docs bench crds test-operator clean

all: test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (fleet-limiter needs Python 3.11+)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "==> installing fleet-limiter and its dev dependencies into $(VENV)"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## test: the whole suite (installs what it needs, builds the local cluster's binaries once)
test: $(STAMP) cluster-build
	@bash tools/ensure-deps.sh
	$(PY) -m pytest $(PYTEST_ARGS)

## test-unit: pure tests only (no Redis, no cluster)
test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## test-long: the suite plus the slow matrices
test-long: $(STAMP) cluster-build
	@bash tools/ensure-deps.sh
	$(PY) -m pytest --run-slow $(PYTEST_ARGS)

## lint: ruff, mypy (strict on limiter/ and operator/) and the import contracts (lint-imports)
lint: $(STAMP)
	$(VENV)/bin/ruff check limiter operator tests bench tools
	$(VENV)/bin/ruff format --check limiter operator tests bench tools
	$(VENV)/bin/mypy limiter
	$(VENV)/bin/mypy operator
	$(VENV)/bin/lint-imports

fmt: $(STAMP)
	$(VENV)/bin/ruff format limiter operator tests bench tools
	$(VENV)/bin/ruff check --fix limiter operator tests bench tools

## run: the main job on a local default: the local Kubernetes control plane, a private Redis, the
## chart installed with Helm, the example policy with three limiter pods, a stream of jobs through
## them and a live view of the allocation per pod (Ctrl-C cleans up)
run: $(STAMP) cluster-build
	@bash tools/ensure-deps.sh
	$(PY) tools/demo.py $(RUN_ARGS)

## run-local: the same without Kubernetes: a private Redis and INSTANCES local limiter processes of POLICY
run-local: $(STAMP)
	@bash tools/ensure-deps.sh
	$(PY) tools/localfleet.py --policy $(POLICY) --instances $(INSTANCES) $(RUN_ARGS)

## plan: print the allocation of POLICY for INSTANCES instances
plan: $(STAMP)
	$(VENV)/bin/fleet-limiter plan --policy $(POLICY) --instances $(INSTANCES)

## bench: every benchmark (builds/installs the peers into ~/.cache/fleet-limiter/peers the first time)
bench: $(STAMP)
	@bash tools/ensure-deps.sh
	$(PY) bench/run_all.py $(BENCH_ARGS)

## crds: regenerate crds/, the chart's CRDs and docs/crd-reference.md from the policy model
crds: $(STAMP)
	$(PY) tools/gen_crd.py

## test-operator: the operator's tests (pure, then Helm and the operator on the local cluster)
test-operator: cluster-build $(STAMP)
	@bash tools/ensure-deps.sh
	$(PY) -m pytest tests/operator $(PYTEST_ARGS)

## docs: regenerate docs/examples.md (the plan of every example policy) and the benchmark figures in
## README.md and bench/README.md from the latest bench/results/*.json (bench/report.py)
docs: $(STAMP)
	$(PY) tools/gen_docs.py
	$(PY) tools/gen_openapi.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# The local Kubernetes control plane (tools/localcluster): cluster-up, cluster-down, test-cluster.
-include tools/localcluster/cluster.mk
# Real containers (tools/kind): docker-up, image, image-name, redis-image, image-check, kind-up, kind-down.
-include tools/kind/kind.mk
# The e2e suite (tests/e2e): e2e on the local control plane, e2e-kind where Docker exists.
-include tests/e2e/e2e.mk
