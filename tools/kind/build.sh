#!/usr/bin/env bash
# Builds the Go parts of the kind node image once into ~/.cache/fleet-limiter/kind/ (a line per step
# with its time; output in the build log): kind itself, kubelet, kubeadm and kube-proxy (from the same
# k8s.io modules as tools/localcluster, whose build.sh gives kube-apiserver, -controller-manager,
# -scheduler, kubectl, etcd and helm), crictl, CoreDNS and local-path-provisioner. A binary already
# in the cache is not built again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
COREDNS_VERSION=v1.12.0           # kubeadm v1.33's CoreDNSVersion
CRICTL_VERSION=v1.34.0           # v1.33.0 is not served by the module proxy
LOCAL_PATH_VERSION=v0.0.30
NODE_BIN=$KIND_CACHE/node-$K8S_VERSION/bin
export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--buildvcs=false}
mkdir -p "$NODE_BIN" "$KIND_CACHE/src"
log=$KIND_CACHE/build.log
command -v go >/dev/null || die "go not found (install Go 1.24+): kind and the node's binaries are built from Go modules"

step() {
  local name=$1; shift
  local t0=$SECONDS said=$SECONDS
  ( "$@" ) >>"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS - said >= 30 )) && kill -0 "$pid" 2>/dev/null; then
      say "build: $name still running ($((SECONDS - t0))s)"; said=$SECONDS
    fi
  done
  wait "$pid" || { tail -n 30 "$log" >&2; die "build: $name failed after $((SECONDS - t0))s (log: $log)"; }
  say "build: $name done in $((SECONDS - t0))s"
}
gobin_install() {  # DEST PACKAGE@VERSION [LDFLAGS]
  local dest=$1 pkg=$2 tmp; tmp=$(mktemp -d "$KIND_CACHE/src/gobin.XXXXXX")
  GOBIN=$tmp go install -trimpath -ldflags "-s -w ${3:-}" "$pkg"
  mv "$tmp"/* "$dest" && rmdir "$tmp"
}

[[ -x $KIND_BIN/kind ]] || step "kind $KIND_VERSION" gobin_install "$KIND_BIN/kind" "sigs.k8s.io/kind@$KIND_VERSION"

k8s_src=$KIND_CACHE/src/k8s
prepare_k8s() {
  rm -rf "$k8s_src" && cp -r "$KIND_DIR/../localcluster/k8s" "$k8s_src"
  cp -r "$KIND_DIR/node/cmd/." "$k8s_src/cmd/"
  cd "$k8s_src" && go mod tidy
}
# shellcheck source=../k8s-build.sh
source "$KIND_DIR/../k8s-build.sh"   # k8s_ldflags, build_k8s SRC BIN NAME (as tools/localcluster builds)
want=()
for b in kubelet kubeadm kube-proxy; do [[ -x $NODE_BIN/$b ]] || want+=("$b"); done
if ((${#want[@]})); then
  step "k8s $K8S_VERSION modules (+ kubelet, kubeadm, kube-proxy)" prepare_k8s
  for b in "${want[@]}"; do step "$b $K8S_VERSION" build_k8s "$k8s_src" "$NODE_BIN" "$b"; done
fi
[[ -x $NODE_BIN/crictl ]] || step "crictl $CRICTL_VERSION" gobin_install "$NODE_BIN/crictl" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
[[ -x $NODE_BIN/coredns ]] || step "coredns $COREDNS_VERSION" gobin_install "$NODE_BIN/coredns" "github.com/coredns/coredns@$COREDNS_VERSION"
[[ -x $NODE_BIN/local-path-provisioner ]] || step "local-path-provisioner $LOCAL_PATH_VERSION" \
  gobin_install "$NODE_BIN/local-path-provisioner" "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"
say "build: node binaries cached in $NODE_BIN"
