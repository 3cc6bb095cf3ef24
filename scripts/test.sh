#!/usr/bin/env bash
# The project's test command (README): installs what the tests need (Tansu, the Autobahn|Testsuite,
# Python websockets, Prometheus, cargo-deb, HAProxy, Chromium and the JavaScript client's npm dev
# dependencies), runs every test (tests/js_client.rs runs the client's Node and Chromium tests;
# tests/cluster.rs the short cluster scenario behind HAProxy), then a short run of each fuzz target
# (scripts/fuzz.sh; FUZZ_SECONDS per target, 0 to skip).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/install-tansu.sh
./scripts/install-autobahn.sh
./scripts/install-pyws.sh
./scripts/install-prometheus.sh
./scripts/install-deb-tools.sh
./scripts/install-haproxy.sh
./scripts/install-chromium.sh
./scripts/install-js-deps.sh
cargo test --workspace --all-targets "$@"
if [ "${FUZZ_SECONDS:-20}" != 0 ]; then
  ./scripts/fuzz.sh -t "${FUZZ_SECONDS:-20}"
fi
