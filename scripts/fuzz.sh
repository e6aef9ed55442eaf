#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of the readers of untrusted input (fuzz/): JSON lines,
# text cells, the plugin boundary's messages, Parquet files (seeded from fuzz/seeds/). Each target runs for SECONDS (default 60);
# a crash leaves its input under fuzz/artifacts/<target>/ and fails this script.
#
#   bash scripts/fuzz.sh            # every target, 60 s each
#   bash scripts/fuzz.sh 300 json_lines
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(json_lines text_cells abi_messages parquet_files)
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install --profile minimal nightly
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
for target in "${targets[@]}"; do
  echo "==> fuzzing $target for ${seconds}s"
  # -rss_limit_mb bounds memory; -max_len keeps inputs to a few records (a few
  # row groups for Parquet, whose seeds are up to 6 KB).
  max_len=4096
  corpora=()
  if [ -d "fuzz/seeds/$target" ]; then
    max_len=16384
    mkdir -p "fuzz/corpus/$target"
    corpora=("fuzz/corpus/$target" "fuzz/seeds/$target")
  fi
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "${corpora[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len="$max_len" -print_final_stats=1
done
