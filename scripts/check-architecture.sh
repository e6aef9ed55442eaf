#!/usr/bin/env bash
# Structural rules that a compiler does not enforce, checked on every test run
# (ARCHITECTURE.md lists them):
# - the crates that store, serve and read features never link the plugin runtime
#   (wasmtime): only the executor, the hosts above it and the CLI do.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
for crate in lockstep-core lockstep-online lockstep-offline lockstep-delta lockstep-catalog \
  lockstep-serving lockstep-cache lockstep-featurestore lockstep-training lockstep-client; do
  linked=$(cargo tree --locked -p "$crate" -e normal --prefix none | grep -c '^wasmtime ' || true)
  if [ "$linked" -ne 0 ]; then
    echo "architecture: $crate links wasmtime ($linked crates); only lockstep-executor and above may" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "architecture: no store, serving or training crate links wasmtime"
exit "$status"
