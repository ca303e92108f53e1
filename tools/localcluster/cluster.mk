# The local Kubernetes control plane (tools/localcluster/README.md), included by the top Makefile.
# PY and STAMP come from there: the node agent and the tests run with the project's virtualenv.
LOCALCLUSTER := tools/localcluster

.PHONY: cluster-build cluster-up cluster-down cluster-status cluster-purge test-cluster

## cluster-build: build (once, into ~/.cache/fleet-limiter/) etcd, the control plane, kubectl and helm
cluster-build:
	@bash $(LOCALCLUSTER)/build.sh

## cluster-up: start the local cluster on 127.0.0.1 (idempotent) and print the KUBECONFIG line
cluster-up: cluster-build $(STAMP)
	@$(PY) $(LOCALCLUSTER)/cluster.py up

## cluster-down: stop everything cluster-up started, pods included (state in .cluster/ is kept)
cluster-down:
	@python3 $(LOCALCLUSTER)/cluster.py down

cluster-status:
	@python3 $(LOCALCLUSTER)/cluster.py status

## cluster-purge: cluster-down, then remove .cluster/ (certificates, etcd data, logs)
cluster-purge:
	@python3 $(LOCALCLUSTER)/cluster.py purge

## test-cluster: the tests against the local cluster (brings it up once, reuses a running one)
test-cluster: cluster-build $(STAMP)
	$(PY) -m pytest tests/cluster $(PYTEST_ARGS)
