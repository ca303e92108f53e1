# The e2e suite (tests/e2e, docs/e2e.md), included by the top Makefile:
#   -include tests/e2e/e2e.mk
# PY, STAMP and PYTEST_ARGS come from there; cluster-build from tools/localcluster/cluster.mk.

.PHONY: e2e e2e-kind

## e2e: the e2e suite on the local control plane (brings it up, a private Redis, helm install; about 3 min)
e2e: $(STAMP) cluster-build
	@bash tools/ensure-deps.sh
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

## e2e-kind: the same suite on a kind cluster (needs Docker, kind, kubectl and helm; tools/kind/e2e.sh)
e2e-kind: $(STAMP)
	bash tools/kind/e2e.sh $(PYTEST_ARGS)
