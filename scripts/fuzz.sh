#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets) from their committed inputs: the hand-made seeds
# (fuzz/seeds, written by fuzz/make_seeds.py) and what earlier runs found (fuzz/corpus).
#
#   scripts/fuzz.sh                 short run of every target (20 s each; the README's test command)
#   scripts/fuzz.sh -t 600 jwt      one target for 10 minutes
#   scripts/fuzz.sh -t 900 -u       long runs that add what they find to fuzz/corpus and minimize it
#
# New inputs go to fuzz/target/work/<target> unless -u; crashes to fuzz/artifacts/<target>, and the
# script fails. The fuzzer's whole log is kept in fuzz/target/logs/<target>.log. The build keeps
# debug assertions (cargo fuzz's default, no -O). cargo fuzz passes sanitizer flags that need nightly;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them (in fuzz/'s own target directory only).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1
SECONDS_EACH=20
UPDATE=0
while getopts "t:u" opt; do
  case $opt in
    t) SECONDS_EACH=$OPTARG ;;
    u) UPDATE=1 ;;
    *) echo "usage: $0 [-t seconds] [-u] [target...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(handshake_request client_frames jwt kafka_record)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz..." >&2
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
cargo fuzz build
for t in "${TARGETS[@]}"; do
  if [ "$UPDATE" = 1 ]; then
    mkdir -p "corpus/$t"
    dirs=("corpus/$t" "seeds/$t")
  else
    rm -rf "target/work/$t"
    mkdir -p "target/work/$t"
    dirs=("target/work/$t" "corpus/$t" "seeds/$t")
  fi
  echo "fuzzing $t for ${SECONDS_EACH}s" >&2
  mkdir -p target/logs
  set +e
  cargo fuzz run "$t" "${dirs[@]}" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
    2>&1 | tee "target/logs/$t.log" | grep -E "^(stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb)|ERROR|panicked|SUMMARY|Test unit written|INITED|DONE" >&2
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" != 0 ]; then
    echo "fuzz target $t failed (exit $status): see fuzz/artifacts/$t" >&2
    exit 1
  fi
  if [ "$UPDATE" = 1 ]; then
    cargo fuzz cmin "$t" "corpus/$t" 2>&1 | tail -n 1 >&2
  fi
done
