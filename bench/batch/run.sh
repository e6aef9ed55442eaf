#!/usr/bin/env bash
# Backfill benchmark, one command: Lockstep vs DuckDB vs PySpark local[2] on the same
# 10M transactions over 1M cards. Extra arguments go to run.py (e.g. --events 1000000).
# `run.sh --spill` instead runs the larger-than-memory check (spill.py: 20M events
# under --memory-limit 1GiB vs unconstrained, same rows). `run.sh --layouts` compares the
# plain layout with a Delta table (layouts.py: the 10M backfill, a training set over
# each, and a sparse year of small hours). `run.sh --timers` compares txn_velocity with
# wake-ups and without (timers.py: time, peak RSS and rows of the 10M backfill).
# Against DuckDB and PySpark, whose SQL emits one row per transaction, the build
# without wake-ups runs, so that all three compute the same rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c 'import duckdb, pyarrow, pyspark' 2>/dev/null ||
    pip install --quiet --root-user-action=ignore duckdb==2.0.0 pyarrow==26.0.1 pyspark==4.0.1
python3 -c 'import deltalake' 2>/dev/null ||
    pip install --quiet --root-user-action=ignore deltalake==1.6.6
cargo build --release --locked -p lockstep
plugin=target/bench-batch/txn_velocity.wasm
plain=target/bench-batch/txn_velocity-no-timers.wasm
mkdir -p target/bench-batch
target/release/lockstep plugin build plugins/txn_velocity --out "$plugin" >/dev/null
target/release/lockstep plugin build plugins/txn_velocity --features no-timers --out "$plain" >/dev/null
if [ "${1:-}" = "--timers" ]; then
    shift
    exec python3 bench/batch/timers.py --lockstep target/release/lockstep --plugin "$plugin" --plain-plugin "$plain" "$@"
fi
if [ "${1:-}" = "--layouts" ]; then
    shift
    exec python3 bench/batch/layouts.py --lockstep target/release/lockstep --plugin "$plugin" "$@"
fi
if [ "${1:-}" = "--spill" ]; then
    shift
    exec python3 bench/batch/spill.py --lockstep target/release/lockstep --plugin "$plugin" "$@"
fi
exec python3 bench/batch/run.py --lockstep target/release/lockstep --plugin "$plain" "$@"
