#!/usr/bin/env bash
# `make kind-down`: deletes the kind cluster and its Docker network (the images and caches stay).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
CLUSTER=${KIND_CLUSTER:-fleet-limiter}
KIND_NETWORK=${KIND_NETWORK:-fleet-limiter-kind}
docker info >/dev/null 2>&1 || { echo "no Docker engine answers: nothing to delete"; exit 0; }
if [[ -x $KIND_BIN/kind ]] && "$KIND_BIN/kind" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  "$KIND_BIN/kind" delete cluster --name "$CLUSTER" --kubeconfig "$KIND_STATE/kubeconfig" >/dev/null 2>&1
  say "kind-down: deleted kind cluster $CLUSTER"
fi
if docker network inspect "$KIND_NETWORK" >/dev/null 2>&1; then
  docker network rm "$KIND_NETWORK" >/dev/null && say "kind-down: removed network $KIND_NETWORK"
fi
rm -f "$KIND_STATE/kubeconfig"
