#!/usr/bin/env bash
# Installs the system packages the test suite needs when they are missing (Debian/Ubuntu).
# Tests start their own private redis-server on a free loopback port; this only makes sure the binary exists.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  echo "==> installing ${need[*]} from Debian packages"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a system service on install; the tests never use it.
  ($SUDO systemctl disable --now redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1) || true
fi
