#!/usr/bin/env bash
# Installs what `cargo deb` packaging and tests/deb_package.rs need, once:
#   - cargo-deb (pinned), built with `cargo install --locked`;
#   - systemd-analyze (Debian's `systemd` package), for `systemd-analyze verify`;
#   - dpkg-deb and adduser (present on any Debian/Ubuntu host; installed if missing).
# Idempotent: every step checks first and does nothing when the tool is there.
set -euo pipefail

CARGO_DEB_VERSION="${CARGO_DEB_VERSION:-3.8.0}"

if cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    echo "cargo-deb $CARGO_DEB_VERSION: present"
else
    echo "installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)"
    cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
command -v adduser >/dev/null 2>&1 || missing+=(adduser)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "systemd-analyze, dpkg-deb, adduser: present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing ${missing[*]} and no apt-get: install them with the host's package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing ${missing[*]} with apt-get"
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
