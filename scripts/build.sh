#!/usr/bin/env bash
# Configures and builds nemoq into build/ (release) and, with --sanitize,
# build-asan/ (AddressSanitizer + UndefinedBehaviorSanitizer).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
# NEMOQ_SANITIZE=OFF explicitly: a cached ON (from a hand configure) would
# silently turn the release build and its benchmarks into a sanitizer build.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DNEMOQ_SANITIZE=OFF >/dev/null
cmake --build build -j"$jobs" >/dev/null
if [ "${1:-}" = "--sanitize" ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DNEMOQ_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$jobs" >/dev/null
fi
