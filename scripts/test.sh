#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds a release and a
# sanitizer (ASan+UBSan) build, and runs every test in both with ctest;
# then builds the libFuzzer targets with clang and runs each over its seeds
# (./scripts/fuzz.sh --seeds), so a fuzz build that no longer compiles or
# links fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh --sanitize
jobs=$(nproc 2>/dev/null || echo 2)
echo "== release build =="
(cd build && ctest --output-on-failure -j"$jobs")
echo "== sanitizer build (ASan + UBSan) =="
(cd build-asan && ctest --output-on-failure -j"$jobs")
echo "== fuzz targets (clang, ASan+UBSan), seed corpora =="
./scripts/fuzz.sh --seeds
