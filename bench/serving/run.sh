#!/usr/bin/env bash
# Serving benchmark, one command: Lockstep's HTTP API (Rust client) vs Feast's Python
# SDK get_online_features, over the same redis-server on loopback, at the same fixed
# request rates: 1 entity x 50 features and 100 entities x 60 features. Then Lockstep
# alone at ten and twenty times those rates. Extra arguments go to run.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
venv="${LOCKSTEP_FEAST_VENV:-$HOME/.cache/lockstep/feast-venv}"
if ! "$venv/bin/python" -c 'import feast' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "feast[redis]==0.67.0"
fi
cargo build --release --locked -p lockstep-bench --bin serve-latency
exec python3 bench/serving/run.py --lockstep target/release/serve-latency \
    --feast-python "$venv/bin/python" "$@"
