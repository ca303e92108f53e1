#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite on the kind cluster of `make kind-up` (docs/e2e.md), real containers:
#   1. kind-up.sh: dockerd, the node image, the product and Redis images, the cluster (reused when up);
#   2. tests/e2e against it: FLEET_E2E_CLUSTER=kubeconfig with .kind/kubeconfig, so the suite installs
#      the chart with Helm (in-chart Redis on a PersistentVolumeClaim, the images built here) and
#      reaches pods and Redis through `kubectl port-forward` on 127.0.0.1; kubectl and helm are the
#      ones tools/localcluster builds;
#   3. KIND_DOWN=1 deletes the cluster afterwards (kept by default: the next run is warm).
# Arguments are passed to pytest (e.g. -k scaling). Environment: KIND_CLUSTER, FLEET_E2E_SCALE_PODS.
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
set +e
PATH=$CLUSTER_BIN:$PATH KUBECONFIG=$KIND_STATE/kubeconfig FLEET_E2E_CLUSTER=kubeconfig \
  FLEET_E2E_IMAGE=$IMAGE FLEET_E2E_REDIS_IMAGE=$REDIS_IMAGE KIND_CLUSTER=${KIND_CLUSTER:-fleet-limiter} \
  .venv/bin/python -P -m pytest tests/e2e "$@"
rc=$?
set -e
say "e2e-kind: tests/e2e exited $rc"
exit $rc
