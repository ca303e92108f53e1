#!/usr/bin/env bash
# The project's images, a line per step with its time (docs/e2e.md):
#   images.sh name       prints the product image's name:tag (the chart's default: fleet-limiter:<appVersion>)
#   images.sh image      builds it from the repository's Dockerfile
#   images.sh redis      builds the Redis image of the chart on kind (Debian's redis-server)
#   images.sh debian     builds the Debian base (debootstrap bookworm + docker import), cached
# BASE picks the Dockerfile's base: `auto` (default) uses python:3.11-slim when it is present or can be
# pulled, else builds fleet-limiter/python:3.11-bookworm here from Debian packages.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
APP_VERSION=$(awk -F'"' '/^appVersion:/ {print $2}' "$REPO_DIR/charts/fleet-limiter/Chart.yaml")
IMAGE=${IMAGE:-fleet-limiter:$APP_VERSION}
REDIS_IMAGE=${REDIS_IMAGE:-fleet-limiter/redis:7.0-bookworm}
DEBIAN_IMAGE=fleet-limiter/debian:bookworm
PYTHON_IMAGE=fleet-limiter/python:3.11-bookworm
OFFICIAL_PYTHON=python:3.11-slim
ROOTFS_TAR=$CACHE_ROOT/images/debian-bookworm-minbase.tar

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# build NAME ARGS...: docker build with its output in .kind/build-NAME.log, shown when it fails.
build() {
  local name=$1; shift
  mkdir -p "$KIND_STATE"
  local log=$KIND_STATE/build-$name.log
  docker build "$@" >"$log" 2>&1 || { tail -30 "$log" >&2; die "docker build of $name failed (log: $log)"; }
}

# The Debian mirror this machine's apt uses (DEBIAN_MIRROR overrides): the base then reaches the same one.
debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
  [[ -n $uri ]] || uri=$(grep -hs -E '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1 || true)
  [[ -n $uri ]] || die "no Debian mirror found in /etc/apt (set DEBIAN_MIRROR)"
  echo "$uri"
}

debian() {
  if have_image "$DEBIAN_IMAGE"; then return; fi
  if [[ ! -s $ROOTFS_TAR ]]; then
    command -v debootstrap >/dev/null || apt-get install -y -q --no-install-recommends debootstrap >/dev/null \
      || die "debootstrap is missing (apt-get install debootstrap)"
    mkdir -p "$CACHE_ROOT/images"  # a fresh machine has no cache yet
    local root mirror; root=$(mktemp -d "$CACHE_ROOT/images/rootfs.XXXXXX"); mirror=$(debian_mirror)
    say "images: debootstrap bookworm (minbase) from $mirror"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" \
      >"$CACHE_ROOT/images/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE_ROOT/images/debootstrap.log" >&2; die "debootstrap failed"; }
    # This machine's apt sources and Acquire settings, and the CAs it trusts (a TLS-inspecting egress
    # proxy's, where there is one), so builds inside the image reach the registries the host reaches.
    cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
    [[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
    grep -ls 'Acquire::' /etc/apt/apt.conf.d/* | while read -r f; do cp "$f" "$root/etc/apt/apt.conf.d/"; done
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
      chroot "$root" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$root"
    say "images: rootfs cached in $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
  fi
  docker import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$ROOTFS_TAR" "$DEBIAN_IMAGE" >/dev/null
  say "images: imported $DEBIAN_IMAGE"
}

python_base() {
  local base=${BASE:-auto}
  if [[ $base == auto ]]; then
    if have_image "$OFFICIAL_PYTHON" || docker pull -q "$OFFICIAL_PYTHON" >/dev/null 2>&1; then
      base=$OFFICIAL_PYTHON
    else
      base=local
    fi
  fi
  if [[ $base == local ]]; then
    if ! have_image "$PYTHON_IMAGE"; then
      debian >&2
      say "images: building $PYTHON_IMAGE (no registry serves $OFFICIAL_PYTHON)" >&2
      build python -t "$PYTHON_IMAGE" --build-arg DEBIAN="$DEBIAN_IMAGE" \
        -f "$KIND_DIR/images/python.Dockerfile" "$KIND_DIR/images"
    fi
    base=$PYTHON_IMAGE
  fi
  echo "$base"
}

image() {
  local base; base=$(python_base)
  say "images: building $IMAGE from the Dockerfile (BASE=$base)"
  build image -t "$IMAGE" --build-arg BASE="$base" "$REPO_DIR"
  say "images: $IMAGE built ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
}

redis() {
  debian
  say "images: building $REDIS_IMAGE (Debian's redis-server)"
  build redis -t "$REDIS_IMAGE" --build-arg DEBIAN="$DEBIAN_IMAGE" \
    -f "$KIND_DIR/images/redis.Dockerfile" "$KIND_DIR/images"
  say "images: $REDIS_IMAGE built ($(docker image inspect -f '{{.Size}}' "$REDIS_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
}

case ${1:-} in
  name) echo "$IMAGE" ;;
  redis-name) echo "$REDIS_IMAGE" ;;
  image) bash "$KIND_DIR/docker.sh"; image ;;
  redis) bash "$KIND_DIR/docker.sh"; redis ;;
  debian) bash "$KIND_DIR/docker.sh"; debian ;;
  *) echo "usage: images.sh name|redis-name|image|redis|debian" >&2; exit 2 ;;
esac
