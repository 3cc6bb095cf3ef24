#!/usr/bin/env bash
# Installs Debian's haproxy package: the L4 load balancer in front of the gateway nodes in
# bench/cluster.py and tests/cluster.rs. Does nothing (and prints nothing) when haproxy is on PATH.
# The package's systemd service is not started: policy-rc.d refuses service starts during the install.
set -euo pipefail
if command -v haproxy >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing Debian's haproxy package (load balancer for the cluster test)..." >&2
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  created_policy=1
fi
cleanup() {
  if [ -n "$created_policy" ]; then
    $SUDO rm -f "$policy"
  fi
}
trap cleanup EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null
command -v haproxy >/dev/null 2>&1 || {
  echo "haproxy still not on PATH after installing the package" >&2
  exit 1
}
