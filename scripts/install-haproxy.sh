#!/usr/bin/env bash
# Installs Debian's haproxy package: the L4 load balancer in front of the gateway nodes in
# bench/cluster.py and tests/cluster.rs. Does nothing (and prints nothing) when haproxy is on PATH.
set -euo pipefail
if command -v haproxy >/dev/null 2>&1; then
  exit 0
fi
echo "installing Debian's haproxy package (load balancer for the cluster test)..." >&2
"$(dirname "$0")/apt-install.sh" haproxy
command -v haproxy >/dev/null 2>&1 || {
  echo "haproxy still not on PATH after installing the package" >&2
  exit 1
}
