#!/usr/bin/env bash
# Builds and runs the benchmarks; prints Markdown tables (copied into docs/benchmarks.md).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh" "$repo/build"
"$repo/build/bench/vtm_bench" "$@"
