#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set up, build in Release and run every test
# (unit, integration with real processes, interop with real Node.js, the installed package),
# then the same tests under AddressSanitizer + UndefinedBehaviorSanitizer, then each fuzzer
# for a bounded time. Formatting is checked first.
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
