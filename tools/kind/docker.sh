#!/usr/bin/env bash
# Makes a Docker engine answer on /var/run/docker.sock (idempotent), a line per step:
#   1. installs Debian's docker.io when dockerd is missing (/usr/local/bin/docker may be a client only);
#   2. when no engine answers, starts dockerd (log and pid in .kind/), with the OCI runtime wrapper
#      fleet-runc (runc-wrapper/) as its default runtime ONLY when CAP_SYS_RESOURCE is missing from
#      this machine's capability bounding set: there runc cannot grant that capability and every
#      privileged container (a kind node) fails with "unable to apply caps: operation not permitted".
# An engine that already answers is used as it is. `docker.sh stop` stops a dockerd this script started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p "$KIND_STATE"
pidfile=$KIND_STATE/dockerd.pid
log=$KIND_STATE/dockerd.log
WRAPPER=$KIND_BIN/fleet-runc

# cap_missing CAP_NUMBER: true when the capability is not in this process's bounding set.
cap_missing() {
  local bnd
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (( (16#$bnd >> $1 & 1) == 0 ))
}
CAP_SYS_RESOURCE=24

build_wrapper() {
  local src=$KIND_DIR/runc-wrapper
  if [[ -x $WRAPPER && $WRAPPER -nt $src/main.go ]]; then return; fi
  command -v go >/dev/null || die "go not found: it builds the runtime wrapper (tools/kind/runc-wrapper)"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$WRAPPER.tmp" . && mv "$WRAPPER.tmp" "$WRAPPER")
  say "built the runtime wrapper $WRAPPER"
}

stop() {
  [[ -f $pidfile ]] || { echo "no dockerd started by tools/kind ($pidfile absent)"; return 0; }
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping dockerd (pid $pid)"
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$pidfile"
}
[[ ${1:-} == stop ]] && { stop; exit 0; }

if docker info >/dev/null 2>&1; then
  say "docker: an engine answers ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi

if ! command -v dockerd >/dev/null; then
  [[ $(id -u) == 0 ]] || die "dockerd is missing; install Docker (as root: apt-get install docker.io)"
  say "docker: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends docker.io iptables >"$KIND_STATE/apt.log" 2>&1 \
    || { apt-get update -q >>"$KIND_STATE/apt.log" 2>&1 \
         && apt-get install -y -q --no-install-recommends docker.io iptables >>"$KIND_STATE/apt.log" 2>&1; } \
    || { tail -20 "$KIND_STATE/apt.log" >&2; die "apt-get install docker.io failed (log: $KIND_STATE/apt.log)"; }
fi
[[ $(id -u) == 0 ]] || die "no Docker engine answers and starting dockerd needs root"

runtime_flags=()
if cap_missing $CAP_SYS_RESOURCE; then
  build_wrapper
  runtime_flags=(--add-runtime "fleet-runc=$WRAPPER" --default-runtime fleet-runc)
  say "docker: CAP_SYS_RESOURCE is not in the bounding set: default runtime fleet-runc (drops it, then runc)"
fi
say "docker: starting dockerd (log: $log)"
nohup dockerd --host unix:///var/run/docker.sock --log-level warn "${runtime_flags[@]}" >"$log" 2>&1 &
echo $! >"$pidfile"
for _ in $(seq 120); do
  docker info >/dev/null 2>&1 && break
  kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -20 "$log" >&2; die "dockerd exited (log: $log)"; }
  sleep 0.5
done
docker info >/dev/null 2>&1 || { tail -20 "$log" >&2; die "dockerd did not answer in 60s (log: $log)"; }
say "docker: dockerd $(docker version -f '{{.Server.Version}}') answers, default runtime $(docker info -f '{{.DefaultRuntime}}')"
