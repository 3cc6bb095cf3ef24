#!/usr/bin/env bash
# Installs the Python `websockets` client (RFC 6455 and RFC 7692 permessage-deflate) into a venv
# unless it is already there. tests/deflate_client.rs drives the gateway with it as a third-party
# client would (scripts/deflate_client.py). The venv lives outside the checkout so clean clones
# reuse it. Prints nothing when already installed.
set -euo pipefail
VERSION=15.0.1
VENV="${PYWS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gateway/pyws-venv}"
if [ -x "$VENV/bin/python" ]; then
  installed=$("$VENV/bin/pip" show websockets 2>/dev/null || true)
  case "$installed" in *"Version: $VERSION"*) exit 0 ;; esac
fi
PY="${PYTHON3:-python3}"
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 9)' >/dev/null 2>&1; then
  echo "install-pyws: Python 3.9 or later not found; set PYTHON3" >&2
  exit 1
fi
echo "installing websockets $VERSION into $VENV (permessage-deflate client for the tests)..." >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "websockets==$VERSION" >&2
