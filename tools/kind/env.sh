# Sourced by the tools/kind scripts: versions, the cache folder and `say`, a line per step with time.
KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$KIND_DIR/../.." && pwd)
# shellcheck source=../localcluster/env.sh
source "$KIND_DIR/../localcluster/env.sh"   # K8S_VERSION, CACHE_ROOT, CLUSTER_BIN, Go on PATH
KIND_VERSION=v0.33.0
KIND_CACHE=$CACHE_ROOT/kind
KIND_BIN=$KIND_CACHE/bin
mkdir -p "$KIND_BIN"
# The state of the dockerd that docker.sh starts (log, pid) and of the kind cluster (kubeconfig).
KIND_STATE=${KIND_STATE:-$REPO_DIR/.kind}
: "${KIND_STARTED:=$SECONDS}"
say() { printf '%6ds %s\n' $((SECONDS - KIND_STARTED)) "$*"; }
die() { echo "error: $*" >&2; exit 1; }
