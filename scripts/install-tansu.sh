#!/usr/bin/env bash
# Installs Tansu, the Apache-licensed Kafka-compatible broker the Kafka tests run against, unless the
# right version is already on PATH or in ~/.cargo/bin. Builds from crates.io (about 10 minutes on 2 cores).
set -euo pipefail
VERSION=0.6.0
export PATH="$HOME/.cargo/bin:$PATH"
if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$VERSION"; then
  exit 0
fi
echo "installing tansu $VERSION (Kafka-compatible broker for the tests)..." >&2
cargo install tansu --version "$VERSION" --locked --no-default-features --features dynostore
