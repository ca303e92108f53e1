# Sourced by the local cluster's scripts: versions, the Go toolchain and the build cache folder.
# The cache lives outside the checkout so fresh clones reuse it; its folder name carries every version.
LOCALCLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$LOCALCLUSTER_DIR/versions.env"
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH=/usr/local/go/bin:$PATH
fi
export PATH
CACHE_ROOT=${FLEET_LIMITER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fleet-limiter}
CLUSTER_CACHE=$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION
CLUSTER_BIN=$CLUSTER_CACHE/bin
CLUSTER_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm)
