#!/usr/bin/env bash
# Installs the JavaScript client's development dependencies (ws, playwright-core, typescript) from
# the committed package-lock.json, unless node_modules already matches it. Needs node 18+ and npm.
set -euo pipefail
cd "$(dirname "$0")/../clients/js"
if ! command -v npm >/dev/null 2>&1; then
  echo "install-js-deps: npm not found; the JavaScript client's tests will be skipped" >&2
  exit 0
fi
# npm writes node_modules/.package-lock.json on install: equal to the lock file's packages, it is current.
if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  exit 0
fi
echo "installing the JavaScript client's dev dependencies (npm ci)..." >&2
npm ci --no-audit --no-fund >&2
