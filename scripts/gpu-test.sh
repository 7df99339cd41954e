#!/usr/bin/env bash
# GPU tests and the GPU benchmark, on a machine with a CUDA GPU: builds
# nemoq with the CUDA backend into build-gpu/ (NEMOQ_CUDA=ON), runs
# tests/gpu/gpu_test.c (GPU vs transformers' logits in tests/fixtures, GPU
# vs CPU logits / perplexity / calibrated checkpoints, determinism; ends
# with "N passed, N failed"), then, when python3 has torch and transformers
# with CUDA, bench/transformers_forward.py on the tokens the GPU benchmark
# used.
#
# NEMOQ_GPU_BIN=DIR skips the build and takes nemoq-gpu-test from DIR (for a
# GPU machine without the build dependencies: build elsewhere, copy over).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${NEMOQ_GPU_BIN:-}" ]; then
  ./scripts/install-deps.sh
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DNEMOQ_SANITIZE=OFF -DNEMOQ_CUDA=ON \
    -DNEMOQ_TESTS=OFF >/dev/null
  cmake --build build-gpu -j"$(nproc 2>/dev/null || echo 2)" --target nemoq nemoq-gpu-test >/dev/null
  NEMOQ_GPU_BIN=$root/build-gpu
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
"$NEMOQ_GPU_BIN/nemoq-gpu-test" "$root" "$tmp" || status=$?
bench="${NEMOQ_BENCH_PY:-$root/bench/transformers_forward.py}"
if python3 -c "import torch, transformers, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  for ctx in 256 2048; do
    [ -f "$tmp/bench_ids_$ctx.i32" ] &&
      python3 "$bench" models/tiny-nemotron-h "$tmp/bench_ids_$ctx.i32" "$ctx" 2>&1 | grep '^BENCH' || true
  done
else
  echo "transformers benchmark skipped: python3 lacks torch/transformers with CUDA"
fi
exit $status
