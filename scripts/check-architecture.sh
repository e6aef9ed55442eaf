#!/usr/bin/env bash
# Structural rules that a compiler does not enforce, checked on every test run
# (ARCHITECTURE.md lists them):
# - the crates that store, serve and read features never link the plugin runtime
#   (wasmtime): only the executor, the hosts above it and the CLI do;
# - library code builds no tokio runtime: binaries own the runtime and libraries run on
#   the caller's. Test code (tests/, #[cfg(test)] modules, the testkit) may build its
#   own. The offline store's S3 backend and its Delta log reader still do: they serve
#   a synchronous store API; any other site fails the check.
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
known="hosts/delta/src/lib.rs hosts/offline/src/backend.rs"
found=$(find hosts runtime plugin-sdk -path '*/src/*.rs' -not -path 'hosts/cli/*' \
  -not -path 'hosts/testkit/*' -print0 | xargs -0 awk '
    FNR == 1 { in_tests = 0 }
    /#\[cfg\(test\)\]/ { in_tests = 1 }
    !in_tests && /Builder::new_(multi|current)_thread|Runtime::new\(\)/ { print FILENAME }' | sort -u)
count=0
for file in $found; do
  count=$((count + 1))
  case " $known " in
    *" $file "*) ;;
    *) echo "architecture: $file builds a tokio runtime in library code; take the caller's" >&2
       status=1 ;;
  esac
done
echo "architecture: tokio runtimes built in library code: $count file(s) ($(echo $found | tr '\n' ' '))"
exit "$status"
