#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite on a kind cluster, for machines with Docker (docs/e2e.md).
#
#   1. creates the kind cluster `fleet-limiter-e2e` (tools/kind/cluster.yaml), or reuses it;
#   2. builds the image from the Dockerfile and loads it into the cluster's node (with Redis's);
#   3. runs tests/e2e against it: FLEET_E2E_CLUSTER=kubeconfig with the cluster's own kubeconfig,
#      so the suite installs the chart with Helm (in-chart Redis, the loaded image) and reaches pods
#      and Redis through `kubectl port-forward`;
#   4. deletes the cluster, unless KEEP_KIND=1.
#
# Arguments are passed to pytest (e.g. -k scaling). Environment: KIND_CLUSTER (name), FLEET_E2E_IMAGE
# (default fleet-limiter:e2e), FLEET_E2E_SCALE_PODS (default 50), KEEP_KIND=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${KIND_CLUSTER:-fleet-limiter-e2e}
IMAGE=${FLEET_E2E_IMAGE:-fleet-limiter:e2e}
REDIS_IMAGE=redis:7.4-alpine   # charts/fleet-limiter/values.yaml redis.image
started=$SECONDS
say() { printf '%6ds %s\n' $((SECONDS - started)) "$*"; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH (make e2e-kind needs docker, kind, kubectl, helm)"; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers (docker info failed)"; exit 1; }

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "reusing kind cluster $CLUSTER"
else
  say "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config tools/kind/cluster.yaml --wait 180s
fi
KUBECONFIG_FILE=$(mktemp -t fleet-e2e-kubeconfig.XXXXXX)
cleanup() {
  rm -f "$KUBECONFIG_FILE"
  if [[ "${KEEP_KIND:-}" != 1 ]]; then say "deleting kind cluster $CLUSTER"; kind delete cluster --name "$CLUSTER"; fi
}
trap cleanup EXIT
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"

say "building $IMAGE from the Dockerfile"
docker build -t "$IMAGE" .
say "loading $IMAGE and $REDIS_IMAGE into the cluster's node"
kind load docker-image "$IMAGE" --name "$CLUSTER"
docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1 || docker pull "$REDIS_IMAGE"
kind load docker-image "$REDIS_IMAGE" --name "$CLUSTER"

say "running tests/e2e on $CLUSTER"
set +e
KUBECONFIG=$KUBECONFIG_FILE FLEET_E2E_CLUSTER=kubeconfig FLEET_E2E_IMAGE=$IMAGE \
  .venv/bin/python -P -m pytest tests/e2e "$@"
rc=$?
set -e
say "tests/e2e exited $rc"
exit $rc
