#!/usr/bin/env bash
# Structural rules that a compiler does not enforce, checked on every test run
# (ARCHITECTURE.md lists them):
# - the crates that store, serve and read features never link the plugin runtime
#   (wasmtime): only the executor, the hosts above it and the CLI do;
# - library code builds no tokio runtime: binaries own the runtime and libraries run on
#   the caller's. Test code (tests/, #[cfg(test)] modules, the testkit) may build its
#   own;
# - the command line builds exactly one, in main.
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

# Runtime constructions in library code, by file (before the file's #[cfg(test)] part).
found=$(find hosts runtime plugin-sdk -path '*/src/*.rs' -not -path 'hosts/cli/*' \
  -not -path 'hosts/testkit/*' -print0 | xargs -0 awk '
    FNR == 1 { in_tests = 0 }
    /#\[cfg\(test\)\]/ { in_tests = 1 }
    !in_tests && /Builder::new_(multi|current)_thread|Runtime::new\(\)/ { print FILENAME }' | sort -u)
for file in $found; do
  echo "architecture: $file builds a tokio runtime in library code; take the caller's" >&2
  status=1
done
[ -z "$found" ] && echo "architecture: no library builds a tokio runtime"

cli_runtimes=$(grep -rEc 'Builder::new_(multi|current)_thread|Runtime::new\(\)' hosts/cli/src \
  | awk -F: '{n += $2} END {print n + 0}')
if [ "$cli_runtimes" -ne 1 ]; then
  echo "architecture: the command line builds $cli_runtimes tokio runtimes; main builds the one" >&2
  status=1
else
  echo "architecture: the command line builds one tokio runtime (main)"
fi
exit "$status"
