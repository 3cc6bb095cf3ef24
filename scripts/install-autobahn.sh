#!/usr/bin/env bash
# Installs the Autobahn|Testsuite (`wstest`, Python 2.7 only) into a virtualenv unless it is already
# there. The conformance test (tests/autobahn.rs) runs it; the venv lives outside the checkout so
# clean clones reuse it. Prints nothing when already installed.
set -euo pipefail
VERSION=25.10.1
VENV="${AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gateway/autobahn-venv}"
if [ -x "$VENV/bin/wstest" ]; then
  installed=$("$VENV/bin/pip" show autobahntestsuite 2>/dev/null || true)
  case "$installed" in *"Version: $VERSION"*) exit 0 ;; esac
fi
PY=""
# pyenv's shim answers to `python2.7` even when 2.7 is not selected, so each candidate must run.
for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7 python2.7; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then
    PY="$candidate"
    break
  fi
done
if [ -z "$PY" ]; then
  echo "install-autobahn: Python 2.7 not found (wstest needs it); set PYENV_ROOT or put python2.7 on PATH" >&2
  exit 1
fi
echo "installing autobahntestsuite $VERSION into $VENV (WebSocket conformance suite for the tests)..." >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
# virtualenv releases from 20.22 on no longer create Python 2 environments.
"$PY" -m pip install --quiet --disable-pip-version-check 'virtualenv<20.22' >&2
"$PY" -m virtualenv --quiet "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "autobahntestsuite==$VERSION" >&2
"$VENV/bin/wstest" --autobahnversion >&2
