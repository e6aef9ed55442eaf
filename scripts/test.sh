#!/usr/bin/env bash
# Runs every Lockstep test. On a fresh machine it first installs what the tests need:
# the pinned toolchain and its wasm32-wasip2 target (rustup does not add a listed
# target to a toolchain that is already installed, so we ask explicitly).
#
# Checks, in order: formatting, clippy (warnings are errors), every test of the
# workspace — unit tests, plugins built from source to components, sandbox tests,
# CLI tests against the real binary, integration tests against real servers — then the
# skew gate: `lockstep skew-check` over every golden set through Kinesis (moto).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says when it starts (seconds since the script began): CI has a time limit.
step() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*"; }

channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
step "toolchain: ${channel} with wasm32-wasip2"
# Only reach for the network when something is missing.
if ! rustup run "$channel" rustc --version >/dev/null 2>&1; then
  rustup toolchain install --profile minimal --component rustfmt,clippy "$channel"
fi
if ! rustup target list --installed --toolchain "$channel" | grep -qx wasm32-wasip2; then
  rustup target add --toolchain "$channel" wasm32-wasip2
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed --toolchain "$channel" | grep -q "^${component}"; then
    rustup component add --toolchain "$channel" "$component"
  fi
done
cargo --version

step "system packages: redis-server (the cache tests run a real one on loopback)"
if ! command -v redis-server >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

step "python packages: store readers, and the moto server (S3, Kinesis, Glue on loopback)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  "duckdb==2.0.0" "pyarrow==26.0.1" "moto[server]==5.2.1" "boto3" "deltalake==1.6.6" \
  "polars==1.44.2" "pytest==9.2.0" "pandas==3.1.1"

step "python client: pip-installable from the checkout (its pytest suite runs against a live serve in cargo test)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore ./clients/python
python3 -c 'import lockstep_client; print("lockstep_client", lockstep_client.__file__)'

step "python packages: Feast's stock SDK in its own environment (serve is read through it)"
feast_venv="${HOME:-/tmp}/.cache/lockstep/feast-venv"
if ! "$feast_venv/bin/python" -c 'import feast' 2>/dev/null; then
  python3 -m venv "$feast_venv"
  "$feast_venv/bin/pip" install --quiet --disable-pip-version-check "feast[redis]==0.67.0"
fi
export LOCKSTEP_FEAST_PYTHON="$feast_venv/bin/python"

step "cargo fmt --check"
cargo fmt --all -- --check

step "architecture rules (scripts/check-architecture.sh)"
bash scripts/check-architecture.sh

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked 2>&1 | tee /tmp/lockstep-test-$$.log
passed=$(grep -E '^test result:' /tmp/lockstep-test-$$.log | awk '{p += $4} END {print p + 0}')
failed=$(grep -E '^test result:' /tmp/lockstep-test-$$.log | awk '{f += $6} END {print f + 0}')
rm -f /tmp/lockstep-test-$$.log
echo
echo "${passed} passed, ${failed} failed"

step "skew gate: every golden set through Kinesis (a moto server on loopback), batch = stream"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
cargo build -q -p lockstep --locked
lockstep="${CARGO_TARGET_DIR:-target}/debug/lockstep"
for set in golden/*/; do
  name=$(basename "$set")
  # The first line of `plugin build` is the component's path (no pipe into head: the
  # writer would see a closed pipe).
  built=$("$lockstep" plugin build "plugins/$name" 2>/dev/null)
  wasm=${built%%$'\n'*}
  "$lockstep" skew-check --plugin "$wasm" --events "golden/$name/events.jsonl" \
    --kinesis-endpoint "http://127.0.0.1:$port" --kinesis-shards 2 --shuffle-seed 1
done
echo
echo "all checks passed in ${SECONDS}s"
