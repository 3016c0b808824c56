#!/usr/bin/env bash
# clang-tidy (config: .clang-tidy, findings are errors) over the project's non-test sources,
# using the compile commands of BUILD_DIR (default build/, made by scripts/setup.sh), plus
# clang's -Wthread-safety so the locking annotations (vtm/mutex.h) are checked even when
# BUILD_DIR was compiled by gcc.
#   scripts/lint.sh [BUILD_DIR]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$repo/build}
[[ -f $build/compile_commands.json ]] || "$repo/scripts/setup.sh" "$build"
cd "$repo"
git ls-files '*.cc' | grep -v -E '^(tests|fuzz|bench)/' |
  xargs -n 4 -P "$(nproc)" clang-tidy -p "$build" --quiet --extra-arg=-Wthread-safety 2>&1 |
  grep -E '(warning|error):' | sort -u >"$build/clang-tidy.log" || true
if [[ -s $build/clang-tidy.log ]]; then
  cat "$build/clang-tidy.log"
  echo "lint: $(wc -l <"$build/clang-tidy.log") clang-tidy findings" >&2
  exit 1
fi
echo "lint: clang-tidy clean"
