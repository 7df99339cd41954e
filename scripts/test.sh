#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds a release and a
# sanitizer (ASan+UBSan) build, and runs every test in both with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh --sanitize
jobs=$(nproc 2>/dev/null || echo 2)
echo "== release build =="
(cd build && ctest --output-on-failure -j"$jobs")
echo "== sanitizer build (ASan + UBSan) =="
(cd build-asan && ctest --output-on-failure -j"$jobs")
