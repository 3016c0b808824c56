#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, builds, runs the unit,
# integration and e2e tiers, runs clang-tidy over the sources, builds the libFuzzer targets with
# clang and gives each a short smoke run, then builds with ASan+UBSan and runs the unit and
# integration tiers under the sanitizers, and with TSan for the concurrent parts (listener,
# registry, vtmd's API server, supervisor and migration engine under vtmd_test, migration_test
# and a small load run).
# Benchmarks are not part of it (scripts/bench.sh).
#   scripts/test.sh            everything
#   VTM_TEST_LABELS=unit scripts/test.sh      one tier (a ctest -L regex)
#   VTM_SKIP_SANITIZERS=1 scripts/test.sh     skip the sanitizer passes (ASan+UBSan, TSan)
#   VTM_SKIP_FUZZ=1 scripts/test.sh           skip the fuzz smoke runs (scripts/fuzz.sh runs them longer)
#   VTM_SKIP_LINT=1 scripts/test.sh           skip clang-tidy (scripts/lint.sh)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
labels=${VTM_TEST_LABELS:-unit|integration|e2e}

"$repo/scripts/setup.sh" "$repo/build"
# The e2e tier boots a real guest; build its kernel+initramfs once (cached in build/guest).
if [[ $labels == *e2e* ]]; then
  "$repo/tests/guest/build-guest.sh" "$repo/build/guest"
fi
(cd "$repo/build" && ctest --output-on-failure -L "$labels" -j2)

if [[ -z ${VTM_SKIP_LINT:-} ]]; then
  "$repo/scripts/lint.sh" "$repo/build"
fi

if [[ -z ${VTM_SKIP_FUZZ:-} ]]; then
  CC=clang CXX=clang++ "$repo/scripts/setup.sh" "$repo/build-fuzz" -DVTM_FUZZ=ON \
    -DVTM_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
  (cd "$repo/build-fuzz" && ctest --output-on-failure -L fuzz -j2)
fi

if [[ -z ${VTM_SKIP_SANITIZERS:-} ]]; then
  "$repo/scripts/setup.sh" "$repo/build-asan" -DVTM_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  (cd "$repo/build-asan" && ctest --output-on-failure -L "unit|integration" -j2)
fi

if [[ -z ${VTM_SKIP_SANITIZERS:-} ]]; then
  # TSan: what runs threads. A race report in vtmd's log fails the test that started it
  # (VtmdFixture reads the log; a race injected into vtmd's API server was caught this way);
  # the test binaries stop at their own first report. The load run is small (16 clients of 25
  # operations).
  tsan_tests=(listener_test registry_test registry_anchor_test vtmd_test vtmd_load_test migration_test host_tls_test)
  VTM_BUILD_TARGETS="vtmd vtmctl vtm-instance vtm-verify ${tsan_tests[*]}" \
    "$repo/scripts/setup.sh" "$repo/build-tsan" -DVTM_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug
  export TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1
  regex=$(IFS='|'; echo "^(${tsan_tests[*]})\$")
  (cd "$repo/build-tsan" && VTM_LOAD_CLIENTS=16 VTM_LOAD_OPS=25 ctest --output-on-failure -R "$regex" -j2)
fi
