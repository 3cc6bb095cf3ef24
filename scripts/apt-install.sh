#!/usr/bin/env bash
# Installs Debian packages for the tests (`apt-install.sh PACKAGE...`), as root or through sudo, without
# letting their maintainer scripts start services (policy-rc.d refuses them during the install).
# Recommended packages are left out unless APT_RECOMMENDS=1.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
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
recommends="--no-install-recommends"
if [ "${APT_RECOMMENDS:-0}" = 1 ]; then
  recommends="--install-recommends"
fi
$SUDO apt-get install -y -qq "$recommends" "$@" >/dev/null
