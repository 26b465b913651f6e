#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time: fuzz/run.sh BINARY CORPUS_DIR SECONDS.
# The committed corpus is read, never written; new inputs go to a scratch directory. Exits
# non-zero on any finding (crash, leak, timeout, sanitizer report), leaving the input in
# build/fuzz/artifacts/.
set -euo pipefail
binary=$1 corpus=$2 seconds=$3
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
artifacts="$(dirname "$binary")/../artifacts"
mkdir -p "$artifacts"
"$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$artifacts/$(basename "$binary")-" "$scratch" "$corpus" 2>&1 | tail -n 25
