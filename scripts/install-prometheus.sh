#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus + promtool), which tests/prometheus_rules.rs and
# tests/prometheus_scrape.rs run. Does nothing (and prints nothing) when both binaries are on PATH.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
echo "installing Debian's prometheus package (prometheus, promtool) for the tests..." >&2
"$(dirname "$0")/apt-install.sh" prometheus
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || {
  echo "prometheus/promtool still not on PATH after installing the package" >&2
  exit 1
}
