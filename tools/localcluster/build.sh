#!/usr/bin/env bash
# Builds the local cluster's binaries once into the cache folder (see env.sh), one line per step
# with its elapsed time. A binary already in the cache is not built again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
command -v go >/dev/null || { echo "error: go not found (install Go 1.24+ or put it on PATH)" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--buildvcs=false}
mkdir -p "$CLUSTER_BIN" "$CLUSTER_CACHE/src"
log=$CLUSTER_CACHE/build.log
started=$SECONDS

missing=()
for b in "${CLUSTER_BINARIES[@]}"; do [[ -x $CLUSTER_BIN/$b ]] || missing+=("$b"); done
if ((${#missing[@]} == 0)); then
  echo "==> local cluster binaries are cached in $CLUSTER_BIN"
  exit 0
fi
echo "==> building ${missing[*]} into $CLUSTER_BIN ($(go version | cut -d' ' -f3), $(nproc) cores; log: $log)"

# step NAME COMMAND...: runs COMMAND with its output in the log, printing a line with elapsed time
# when it ends and a heartbeat every 30 s so a long compile is never silent.
step() {
  local name=$1; shift
  local t0=$SECONDS
  printf '  %-28s ...\n' "$name"
  ( "$@" ) >>"$log" 2>&1 &
  local pid=$!
  local said=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS - said >= 30 )) && kill -0 "$pid" 2>/dev/null; then
      printf '  %-28s still running, %ds\n' "$name" $((SECONDS - t0))
      said=$SECONDS
    fi
  done
  if ! wait "$pid"; then
    printf '  %-28s FAILED after %ds; last lines of %s:\n' "$name" $((SECONDS - t0)) "$log" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  printf '  %-28s done in %ds (total %ds)\n' "$name" $((SECONDS - t0)) $((SECONDS - started))
}
want() { [[ ! -x $CLUSTER_BIN/$1 ]]; }

k8s_src=$CLUSTER_CACHE/src/k8s
prepare_k8s() {
  rm -rf "$k8s_src" && cp -r "$LOCALCLUSTER_DIR/k8s" "$k8s_src"
  "$LOCALCLUSTER_DIR/gen-k8s-mod.sh" "$k8s_src"
  if ! diff -q "$LOCALCLUSTER_DIR/k8s/go.mod" "$k8s_src/go.mod" >/dev/null; then
    echo "note: tools/localcluster/k8s/go.mod differs from the generated one; refresh it with gen-k8s-mod.sh"
  fi
}
# shellcheck source=../k8s-build.sh
source "$LOCALCLUSTER_DIR/../k8s-build.sh"   # k8s_ldflags, build_k8s SRC BIN NAME

etcd_src=$CLUSTER_CACHE/src/etcd
build_etcd() {
  rm -rf "$etcd_src" && cp -r "$LOCALCLUSTER_DIR/etcd" "$etcd_src" && cd "$etcd_src"
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$CLUSTER_BIN/etcd.tmp" . && mv "$CLUSTER_BIN/etcd.tmp" "$CLUSTER_BIN/etcd"
}
build_helm() {
  GOBIN=$CLUSTER_CACHE/src/helm-bin go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$CLUSTER_CACHE/src/helm-bin/helm" "$CLUSTER_BIN/helm"
}

if want kube-apiserver || want kube-controller-manager || want kube-scheduler || want kubectl; then
  step "k8s $K8S_VERSION modules" prepare_k8s
fi
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  want "$b" && step "$b $K8S_VERSION" build_k8s "$k8s_src" "$CLUSTER_BIN" "$b"
done
want etcd && step "etcd $ETCD_VERSION" build_etcd
want helm && step "helm $HELM_VERSION" build_helm
echo "==> built in $((SECONDS - started))s: $CLUSTER_BIN"
