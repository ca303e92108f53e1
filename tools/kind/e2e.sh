#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite on the kind cluster of `make kind-up` (docs/e2e.md), real containers:
#   1. kind-up.sh: dockerd, the node image, the product and Redis images, the cluster (reused when up);
#   2. tests/e2e against it: FLEET_E2E_CLUSTER=kubeconfig with .kind/kubeconfig, so the suite installs
#      the chart with Helm (in-chart Redis on a PersistentVolumeClaim, the images built here) and
#      reaches pods through the API server's pod proxy (`kubectl proxy`) and Redis through
#      `kubectl port-forward`, both on 127.0.0.1; kubectl and helm are the
#      ones tools/localcluster builds;
#   3. KIND_DOWN=1 deletes the cluster afterwards (kept by default: the next run is warm).
# Arguments are passed to pytest (e.g. -k scaling). Environment: KIND_CLUSTER, FLEET_E2E_SCALE_PODS
# (default here 20: 50 limiter pods on two kind workers sharing 2 cores did not all start, docs/e2e.md),
# FLEET_E2E_CONTAINERS (default here 1: the container scenarios tests/e2e/test_c*.py run too).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_DIR"
bash "$KIND_DIR/kind-up.sh"
IMAGE=$(bash "$KIND_DIR/images.sh" name)
REDIS_IMAGE=$(bash "$KIND_DIR/images.sh" redis-name)
[[ -x .venv/bin/python ]] || die ".venv is missing (make venv)"
cleanup() { if [[ ${KIND_DOWN:-} == 1 ]]; then bash "$KIND_DIR/kind-down.sh"; fi; }
trap cleanup EXIT
say "e2e-kind: tests/e2e on kind ($IMAGE, $REDIS_IMAGE)"
# Arguments naming tests (a path under tests/) run those; otherwise the whole of tests/e2e.
targets=(tests/e2e)
for arg in "$@"; do [[ $arg == tests/* ]] && targets=(); done
set +e
PATH=$CLUSTER_BIN:$PATH KUBECONFIG=$KIND_STATE/kubeconfig FLEET_E2E_CLUSTER=kubeconfig FLEET_E2E_CONTAINERS=${FLEET_E2E_CONTAINERS:-1} \
  FLEET_E2E_SCALE_PODS=${FLEET_E2E_SCALE_PODS:-20} \
  FLEET_E2E_IMAGE=$IMAGE FLEET_E2E_REDIS_IMAGE=$REDIS_IMAGE KIND_CLUSTER=${KIND_CLUSTER:-fleet-limiter} \
  .venv/bin/python -P -m pytest "${targets[@]}" "$@"
rc=$?
set -e
say "e2e-kind: tests/e2e exited $rc"
exit $rc
