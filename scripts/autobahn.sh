#!/usr/bin/env bash
# The full Autobahn|Testsuite run (every case, 12.x/13.x included), for docs/reliability.md. The
# README's test command runs cases 1-10 through the same test; this keeps the HTML report in
# target/autobahn-full/report/index.html and copies the summary into bench/results/autobahn/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-autobahn.sh
export AUTOBAHN_CASES="${AUTOBAHN_CASES:-*}" AUTOBAHN_REPORT_DIR="$PWD/target/autobahn-full"
cargo test --release --test autobahn -- --nocapture
mkdir -p bench/results/autobahn
cp target/autobahn-full/report/index.json bench/results/autobahn/index.json
echo "summary: bench/results/autobahn/index.json; report: target/autobahn-full/report/index.html"
