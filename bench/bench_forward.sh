#!/usr/bin/env bash
# Builds bench/bench_forward.c against the library sources it needs (bench/
# is not part of the CMake build) and runs it from the repository root.
# Usage: bench/bench_forward.sh [REPS] [THREADS]  (THREADS: a third thread count)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${BENCH_BUILD_DIR:-$root/build-bench}
mkdir -p "$out"
# -O3 as the CMake build compiles the model sources (vectorized scan; same bits)
cc -std=c11 -O3 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
   -I"$root/src" $(pkg-config --cflags openblas jansson libpcre2-8) \
   "$root/bench/bench_forward.c" "$root"/src/core/*.c "$root"/src/io/*.c \
   "$root"/src/formats/*.c "$root"/src/model/*.c "$root"/src/cuda/cuda_none.c \
   $(pkg-config --libs openblas jansson libpcre2-8) -lpthread -lm -o "$out/bench_forward"
exec "$out/bench_forward" "$root" "${1:-3}" "${2:-2}"
