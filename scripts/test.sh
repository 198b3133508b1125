#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set up, build in Release and run every test
# (unit, integration with real processes, interop with real Node.js, the installed package),
# then the same tests under AddressSanitizer + UndefinedBehaviorSanitizer, then the
# shared-memory queue's in-process tests under ThreadSanitizer, then each fuzzer for a bounded
# time. Formatting is checked first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

: "${BUS_FUZZ_SECONDS:=20}"
jobs=2

echo "== Formatting (clang-format, the project's .clang-format)"
git ls-files '*.cpp' '*.hpp' | xargs clang-format --dry-run -Werror

echo "== Release build and tests"
scripts/build.sh build -DCMAKE_BUILD_TYPE=Release -DBUS_BUILD_TESTS=ON
ctest --test-dir build --output-on-failure -j$jobs

echo "== ASan+UBSan build and tests"
scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUS_SANITIZE=ON
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j$jobs

echo "== ThreadSanitizer: shm queue in-process tests (both barrier modes)"
# Only the one test binary (and the library under it) is built with TSan.
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUS_TSAN=ON >/dev/null
cmake --build build-tsan -j$jobs --target shm_unit_tests
TSAN_OPTIONS=halt_on_error=1 build-tsan/bin/shm_unit_tests --gtest_brief=1
TSAN_OPTIONS=halt_on_error=1 BUS_SHM_NO_MEMBARRIER=1 build-tsan/bin/shm_unit_tests --gtest_brief=1

echo "== Fuzzers (${BUS_FUZZ_SECONDS}s each)"
scripts/build.sh build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DBUS_BUILD_FUZZ=ON -DBUS_BUILD_TESTS=OFF -DBUS_BUILD_EXAMPLES=OFF
for fuzzer in build-fuzz/bin/fuzz_*; do
  corpus="tests/fuzz/corpus/$(basename "$fuzzer" | sed 's/^fuzz_//')"
  mkdir -p "build-fuzz/corpus-$(basename "$fuzzer")"
  "$fuzzer" -max_total_time="$BUS_FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 \
    "build-fuzz/corpus-$(basename "$fuzzer")" "$corpus" 2>&1 | grep -E '^Done|ERROR|SUMMARY' 
done
echo "test.sh: all stages passed"
