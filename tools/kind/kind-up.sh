#!/usr/bin/env bash
# `make kind-up`: a kind cluster of one control plane and two workers with the project's images
# loaded, its admin kubeconfig at .kind/kubeconfig, a line per step with its time (docs/e2e.md).
#   1. a Docker engine (docker.sh: installs docker.io and starts dockerd where needed);
#   2. kind and the node image for Kubernetes $K8S_VERSION, built offline and cached (node-image.sh),
#      or KIND_NODE_IMAGE (e.g. kindest/node:v1.33.x with KIND_CONFIG, where a registry is reachable);
#   3. the product image and the Redis image (images.sh);
#   4. the Docker network $KIND_NETWORK on the subnet KIND_SUBNET, created here, so every node
#      address is one this run chose; the API server is published on 127.0.0.1 only;
#   5. the cluster (reused when it is already up), then the images loaded into every node.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
CLUSTER=${KIND_CLUSTER:-fleet-limiter}
KIND_NETWORK=${KIND_NETWORK:-fleet-limiter-kind}
KIND_SUBNET=${KIND_SUBNET:-172.30.100.0/24}
KIND_CONFIG=${KIND_CONFIG:-$KIND_DIR/cluster.yaml}
KUBECONFIG_OUT=$KIND_STATE/kubeconfig
mkdir -p "$KIND_STATE"
t_all=$SECONDS
step_t=$SECONDS
done_step() { say "kind-up: $1 ($((SECONDS - step_t))s)"; step_t=$SECONDS; }

bash "$KIND_DIR/docker.sh"
done_step "docker answers"
bash "$KIND_DIR/build.sh"
KIND=$KIND_BIN/kind
if [[ -n ${KIND_NODE_IMAGE:-} ]]; then
  NODE_IMAGE=$KIND_NODE_IMAGE
else
  NODE_IMAGE=$(bash "$KIND_DIR/node-image.sh")
fi
done_step "kind $KIND_VERSION and node image $NODE_IMAGE"
bash "$KIND_DIR/images.sh" image
bash "$KIND_DIR/images.sh" redis
IMAGE=$(bash "$KIND_DIR/images.sh" name)
REDIS_IMAGE=$(bash "$KIND_DIR/images.sh" redis-name)
done_step "images $IMAGE and $REDIS_IMAGE"

if docker network inspect "$KIND_NETWORK" >/dev/null 2>&1; then
  have=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$KIND_NETWORK")
  [[ $have == "$KIND_SUBNET" ]] || die "network $KIND_NETWORK has subnet $have, not $KIND_SUBNET (make kind-down removes it)"
else
  docker network create --driver bridge --subnet "$KIND_SUBNET" \
    --label io.fleet-limiter.kind="$CLUSTER" "$KIND_NETWORK" >/dev/null
fi
done_step "network $KIND_NETWORK ($KIND_SUBNET)"

if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  # A node stopped by a test (docker stop) is started again; its kubelet rejoins.
  for node in $("$KIND" get nodes --name "$CLUSTER"); do
    [[ $(docker inspect -f '{{.State.Running}}' "$node") == true ]] || docker start "$node" >/dev/null
  done
  "$KIND" export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG_OUT" >/dev/null 2>&1
  done_step "reusing kind cluster $CLUSTER"
else
  KIND_EXPERIMENTAL_DOCKER_NETWORK=$KIND_NETWORK "$KIND" create cluster --name "$CLUSTER" \
    --image "$NODE_IMAGE" --config "$KIND_CONFIG" --kubeconfig "$KUBECONFIG_OUT" --wait 3m \
    >"$KIND_STATE/kind-create.log" 2>&1 || { tail -30 "$KIND_STATE/kind-create.log" >&2; die "kind create cluster failed (log: $KIND_STATE/kind-create.log)"; }
  done_step "created kind cluster $CLUSTER"
fi
"$KIND" load docker-image --name "$CLUSTER" "$IMAGE" "$REDIS_IMAGE" >"$KIND_STATE/kind-load.log" 2>&1 \
  || { tail -20 "$KIND_STATE/kind-load.log" >&2; die "kind load docker-image failed"; }
done_step "loaded $IMAGE and $REDIS_IMAGE into every node"
kubectl=$CLUSTER_BIN/kubectl
"$kubectl" --kubeconfig "$KUBECONFIG_OUT" wait --for=condition=Ready nodes --all --timeout=180s >/dev/null
"$kubectl" --kubeconfig "$KUBECONFIG_OUT" get nodes -o wide
say "kind-up: cluster $CLUSTER ready in $((SECONDS - t_all))s; KUBECONFIG=$KUBECONFIG_OUT"
