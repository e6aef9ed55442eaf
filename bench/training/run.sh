#!/usr/bin/env bash
# Training-set benchmark, one command: Lockstep vs DuckDB ASOF JOIN vs Polars join_asof
# on the same files (1M labels, two groups of 10M rows over 1M cards), then Lockstep
# under --memory-limit 512MiB. Extra arguments go to run.py (e.g. --labels 100000).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c 'import duckdb, pyarrow, polars' 2>/dev/null ||
    pip install --quiet --root-user-action=ignore duckdb==2.0.0 pyarrow==26.0.1 polars==2.1.0
cargo build --release --locked -p lockstep -p lockstep-bench --bin lockstep --bin training-group
plugin=target/bench-training/txn_velocity.wasm
mkdir -p target/bench-training
target/release/lockstep plugin build plugins/txn_velocity --out "$plugin" >/dev/null
exec python3 bench/training/run.py --lockstep target/release/lockstep --plugin "$plugin" \
    --group-writer target/release/training-group "$@"
