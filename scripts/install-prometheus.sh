#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus + promtool), which tests/prometheus_rules.rs and
# tests/prometheus_scrape.rs run. Does nothing (and prints nothing) when both binaries are on PATH.
# The package's systemd service is not started: policy-rc.d refuses service starts during the install.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing Debian's prometheus package (prometheus, promtool) for the tests..." >&2
export DEBIAN_FRONTEND=noninteractive
# Keep the package's maintainer scripts from starting the service (invoke-rc.d consults policy-rc.d).
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
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || {
  echo "prometheus/promtool still not on PATH after installing the package" >&2
  exit 1
}
