#!/usr/bin/env bash
# Every figure behind the performance goals (docs/benchmarks.md, "Performance goals against the
# floor"), in one command: the floor series beside the gateway and Nchan, write coalescing, one big
# room, permessage-deflate, batch publish, the upgrade rate and memory per connection. Servers run on
# CPU 0, clients on CPU 1. About 25 minutes; results under bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release     # gateway, loadgen, floor
run() { echo "== $*"; python3 "$@"; }
run bench/run.py --series 5000,10000 --ring-depths 128 --no-ceiling --no-build --out bench/results/floor_series
run bench/run.py --series max --ramp 2000 --ring-depths 128 --no-ceiling --no-build --out bench/results/floor_series_max
run bench/run.py --series 2000 --per-conn-rate 10 --random-rooms --write-delay-ms 0,20 --no-ceiling --no-build \
    --out bench/results/coalescing
run bench/run.py --series 500 --per-conn-rate 40 --random-rooms --write-delay-ms 0,20 --no-ceiling --no-build \
    --out bench/results/coalescing_40
run bench/run.py --series max --room-size all --ramp 2000 --ring-depths 128 --no-ceiling --no-build \
    --out bench/results/one_room
run bench/deflate.py
run bench/publish_batch.py
run bench/connect_rate.py
