#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for
# SECONDS (default 600) from the seed corpus in fuzz/seeds/.
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]
# Findings land in fuzz/crash-* ; the grown corpus in fuzz/corpus-TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --fuzz
seconds=${1:-600}; shift || true
CC=clang cmake -S . -B build-fuzz -DNEMOQ_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)" >/dev/null
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=($(cd build-fuzz && ls fuzz_* 2>/dev/null | grep -v '\.'))
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  mkdir -p "fuzz/corpus-$name"
  seeds="fuzz/seeds/$name"; [ -d "$seeds" ] || seeds=""
  echo "== $t for ${seconds}s =="
  ./build-fuzz/"$t" -max_total_time="$seconds" -max_len=65536 -artifact_prefix=fuzz/crash-"$name"- \
    "fuzz/corpus-$name" $seeds 2>&1 | grep -E '^(#[0-9]+.*(DONE|pulse)|==[0-9]+==|SUMMARY|Done)' | tail -5
done
