#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for SECONDS (default 60),
# starting from its checked-in corpus (fuzz/corpus/NAME, read only) plus what earlier runs found
# (build-fuzz/corpus/NAME, where new inputs go). Ends with a table: executions, corpus size,
# coverage (libFuzzer's cov/ft at the end) and result per target; exits non-zero if any target
# found a crash (its reproducer is in build-fuzz/, named in the output).
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
build=${VTM_FUZZ_BUILD:-$repo/build-fuzz}
CC=clang CXX=clang++ "$repo/scripts/setup.sh" "$build" -DVTM_FUZZ=ON \
  -DVTM_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
mkdir -p "$build/corpus" "$build/fuzz-logs"
failed=0
rows=()
for f in "$build"/fuzz/*_fuzzer; do
  name=$(basename "$f")
  mkdir -p "$build/corpus/$name"
  seeds=()
  [[ -d $repo/fuzz/corpus/$name ]] && seeds=("$repo/fuzz/corpus/$name")
  echo "fuzz: $name for ${seconds}s" >&2
  log=$build/fuzz-logs/$name.log
  result=ok
  (cd "$build" && "$f" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
    "$build/corpus/$name" "${seeds[@]}" >"$log" 2>&1) || { result=CRASH; failed=1; }
  execs=$(grep -oP '^stat::number_of_executed_units:\s*\K[0-9]+' "$log" || echo "?")
  cov=$(grep -oP '(cov: [0-9]+ ft: [0-9]+)' "$log" | tail -1 || true)
  files=$(find "$build/corpus/$name" "${seeds[@]}" -type f | wc -l)
  rows+=("$(printf '%-28s %12s %8s  %-22s %s' "$name" "$execs" "$files" "${cov:-?}" "$result")")
  if [[ $result != ok ]]; then grep -E 'ERROR|SUMMARY|Test unit written' "$log" >&2 || true; fi
done
printf '%-28s %12s %8s  %-22s %s\n' target executions corpus coverage result
printf '%s\n' "${rows[@]}"
exit "$failed"
