#!/usr/bin/env bash
# Builds the kind node image for Kubernetes $K8S_VERSION offline, a line per step with its time:
#   1. the Debian base (images.sh debian) and every image a cluster pulls, built here and named
#      fleet-limiter.local/* (kind's kubeadm config points imageRepository there, tools/kind/cluster.yaml):
#      pause (pause.c), kube-apiserver, -controller-manager, -scheduler (tools/localcluster's build),
#      kube-proxy, etcd, CoreDNS, local-path-provisioner and its helper, fleet-cni (the pod network);
#   2. the node base (node/base.Dockerfile: systemd, Debian's containerd, runc and CNI plugins);
#   3. the node image: kubelet, kubeadm, kubectl, crictl, /kind/version, and all those images imported
#      into its containerd (as kind's own node-image build does), then `docker commit`.
# The node image is tagged with a digest of its inputs and not rebuilt while they are unchanged.
# Prints the node image's name last.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$KIND_DIR/build.sh" >&2
[[ -x $CLUSTER_BIN/kube-apiserver ]] || bash "$KIND_DIR/../localcluster/build.sh" >&2
NODE_BIN=$KIND_CACHE/node-$K8S_VERSION/bin
IMAGES_DIR=$KIND_DIR/node/images
DEBIAN_IMAGE=fleet-limiter/debian:bookworm
REPO=fleet-limiter.local
ETCD_TAG=$ETCD_VERSION
bash "$KIND_DIR/images.sh" debian >&2

# A digest of everything that goes into the node image: binaries, files, Dockerfiles, this script.
inputs=$( (cd "$KIND_DIR" && find node runc-wrapper node-image.sh -type f -print0 | sort -z | xargs -0 sha256sum;
           sha256sum "$NODE_BIN"/* "$CLUSTER_BIN"/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,etcd} "$KIND_BIN/fleet-runc";
           docker image inspect -f '{{.Id}}' "$DEBIAN_IMAGE") | sha256sum | cut -c1-12)
NODE_IMAGE=$REPO/kind-node:$K8S_VERSION-$inputs
if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
  say "node image: $NODE_IMAGE is built (inputs unchanged)" >&2
  echo "$NODE_IMAGE"; exit 0
fi

ctx_root=$(mktemp -d "$KIND_CACHE/ctx.XXXXXX")
trap 'rm -rf "$ctx_root"' EXIT
# image NAME:TAG DOCKERFILE [--build-arg ...] -- BINARY...: builds one image from those binaries in bin/.
image() {
  local name=$1 dockerfile=$2; shift 2
  local args=()
  while (($#)) && [[ $1 != -- ]]; do args+=("$1"); shift; done
  shift
  local ctx=$ctx_root/${name//[:\/]/_}
  mkdir -p "$ctx/bin" && cp "$@" "$ctx/bin/"
  local t0=$SECONDS
  docker build -t "$name" --build-arg DEBIAN="$DEBIAN_IMAGE" "${args[@]}" -f "$IMAGES_DIR/$dockerfile" "$ctx" \
    >"$KIND_STATE/build-image.log" 2>&1 || { tail -20 "$KIND_STATE/build-image.log" >&2; die "building $name failed"; }
  say "node image: built $name in $((SECONDS - t0))s" >&2
  built+=("$name")
}
mkdir -p "$KIND_STATE"
built=()
gcc -static -O2 -o "$ctx_root/pause" "$IMAGES_DIR/pause.c" || die "gcc -static pause.c failed (needs gcc and libc6-dev)"
image "$REPO/pause:3.10" pause.Dockerfile -- "$ctx_root/pause"
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  image "$REPO/$b:$K8S_VERSION" binary.Dockerfile -- "$CLUSTER_BIN/$b"
done
image "$REPO/kube-proxy:$K8S_VERSION" binary.Dockerfile --build-arg PACKAGES="iptables conntrack ipset kmod" -- "$NODE_BIN/kube-proxy"
image "$REPO/etcd:$ETCD_TAG" binary.Dockerfile -- "$CLUSTER_BIN/etcd"
image "$REPO/coredns:v1.12.0" coredns.Dockerfile -- "$NODE_BIN/coredns"
image "$REPO/local-path-provisioner:v0.0.30" binary.Dockerfile -- "$NODE_BIN/local-path-provisioner"
docker tag "$DEBIAN_IMAGE" "$REPO/local-path-helper:bookworm" && built+=("$REPO/local-path-helper:bookworm")
image "$REPO/fleet-cni:bookworm" binary.Dockerfile --build-arg PACKAGES="iproute2" -- \
  "$IMAGES_DIR/fleet-cni.sh" "$CLUSTER_BIN/kubectl"

base_ctx=$ctx_root/base
mkdir -p "$base_ctx" && cp -a "$KIND_DIR/node/files" "$base_ctx/" && cp "$KIND_BIN/fleet-runc" "$base_ctx/"
t0=$SECONDS
docker build -t "$REPO/kind-base:bookworm" --build-arg DEBIAN="$DEBIAN_IMAGE" -f "$KIND_DIR/node/base.Dockerfile" "$base_ctx" \
  >"$KIND_STATE/build-node-base.log" 2>&1 || { tail -20 "$KIND_STATE/build-node-base.log" >&2; die "building the node base failed"; }
say "node image: built $REPO/kind-base:bookworm in $((SECONDS - t0))s" >&2

t0=$SECONDS
cid=$(docker run -d --entrypoint sleep "$REPO/kind-base:bookworm" infinity)
trap 'docker rm -f "$cid" >/dev/null 2>&1; rm -rf "$ctx_root"' EXIT
for b in "$NODE_BIN/kubelet" "$NODE_BIN/kubeadm" "$CLUSTER_BIN/kubectl" "$NODE_BIN/crictl"; do
  docker cp "$b" "$cid:/usr/bin/$(basename "$b")"
done
docker exec "$cid" bash -c "echo $K8S_VERSION >/kind/version && chown root:root /usr/bin/kube* /usr/bin/crictl"
docker exec "$cid" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &'
for _ in $(seq 60); do docker exec "$cid" ctr version >/dev/null 2>&1 && break; sleep 0.5; done
for name in "${built[@]}"; do
  docker save "$name" | docker exec -i "$cid" ctr --namespace=k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --no-unpack --digests - >/dev/null \
    || die "importing $name into the node's containerd failed"
done
docker exec "$cid" pkill containerd || true
sleep 1
docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' "$cid" "$NODE_IMAGE" >/dev/null
say "node image: $NODE_IMAGE with ${#built[@]} images preloaded in $((SECONDS - t0))s ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%d MB", $1/1e6}'))" >&2
echo "$NODE_IMAGE"
