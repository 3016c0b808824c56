#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for SECONDS (default 60).
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
CC=clang CXX=clang++ "$repo/scripts/setup.sh" "$repo/build-fuzz" -DVTM_FUZZ=ON \
  -DVTM_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
mkdir -p "$repo/build-fuzz/corpus"
for f in "$repo"/build-fuzz/fuzz/*_fuzzer; do
  name=$(basename "$f")
  mkdir -p "$repo/build-fuzz/corpus/$name"
  echo "fuzz: $name for ${seconds}s"
  "$f" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "$repo/build-fuzz/corpus/$name" 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|SUMMARY" || true
  test "${PIPESTATUS[0]}" -eq 0
done
