# Sourced by tools/localcluster/build.sh and tools/kind/build.sh: how a Kubernetes binary is built
# from the k8s.io modules (tools/localcluster/k8s), so the local control plane's binaries and the kind
# node's stamp the same version. Needs K8S_VERSION (tools/localcluster/versions.env). Where a binary
# goes (the cache folders, their names) stays with each caller.
k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
unset pkg

# build_k8s SRC BIN NAME: builds ./cmd/NAME of the module in SRC into BIN/NAME (through NAME.tmp, so
# an interrupted build never leaves a binary that looks cached).
build_k8s() {
  local src=$1 bin=$2 name=$3
  cd "$src" && go build -trimpath -ldflags "$k8s_ldflags" -o "$bin/$name.tmp" "./cmd/$name" \
    && mv "$bin/$name.tmp" "$bin/$name"
}
