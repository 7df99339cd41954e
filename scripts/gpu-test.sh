#!/usr/bin/env bash
# GPU tests and the GPU benchmark, on a machine with a CUDA GPU: builds
# nemoq with the CUDA backend into build-gpu/ (NEMOQ_CUDA=ON), runs
# tests/gpu/ (GPU vs transformers' logits in tests/fixtures, the device
# router vs nq_moe_select, the Nano-width reference model vs transformers,
# GPU vs CPU logits / perplexity / calibrated checkpoints, determinism;
# ends with "N passed, N failed"), then benchmark 1 when python3 has torch
# and transformers with CUDA: nemoq's GPU forward vs transformers' bf16 GPU
# forward of the same model and tokens, on the bundled model and on the
# Nano-width model (written by nemoq-gen-nano-width, 2.7 GB, into a
# temporary directory), printed as ratios; nemoq in each GEMM mode
# (NEMOQ_CUDA_GEMM=f32|bf16x3|bf16x3k|bf16x2, see src/cuda/cuda.h; the GPU
# tests run in the default mode, or in NEMOQ_CUDA_GEMM's when it is set).
#
# NEMOQ_GPU_BIN=DIR skips the build and takes nemoq-gpu-test and
# nemoq-gen-nano-width from DIR (for a GPU machine without the build
# dependencies: build elsewhere, copy over).  NEMOQ_NANO_WINDOWS (default 4)
# windows of 2048 tokens for the Nano-width benchmark (transformers'
# pure-PyTorch Mamba path needs ~8 GiB per window there).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${NEMOQ_GPU_BIN:-}" ]; then
  ./scripts/install-deps.sh
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DNEMOQ_SANITIZE=OFF -DNEMOQ_CUDA=ON \
    -DNEMOQ_TESTS=OFF >/dev/null
  cmake --build build-gpu -j"$(nproc 2>/dev/null || echo 2)" \
    --target nemoq nemoq-gpu-test nemoq-gen-nano-width >/dev/null
  NEMOQ_GPU_BIN=$root/build-gpu
fi
# NEMOQ_GPU_TMP=DIR: work there and keep it (the Nano-width checkpoint, the
# token ids), else a temporary directory removed at the end
if [ -n "${NEMOQ_GPU_TMP:-}" ]; then
  tmp=$NEMOQ_GPU_TMP
  mkdir -p "$tmp"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
fi
status=0
"$NEMOQ_GPU_BIN/nemoq-gpu-test" "$root" "$tmp" | tee "$tmp/bench.log" || status=$?
bench="${NEMOQ_BENCH_PY:-$root/bench/transformers_forward.py}"
if python3 -c "import torch, transformers, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  for ctx in 256 2048; do
    if [ -f "$tmp/bench_ids_$ctx.i32" ]; then
      python3 "$bench" models/tiny-nemotron-h "$tmp/bench_ids_$ctx.i32" "$ctx" 2>&1 | grep '^BENCH' || true
      python3 "$bench" models/tiny-nemotron-h "$tmp/bench_ids_$ctx.i32" "$ctx" 1000000 backbone 2>&1 |
        grep '^BENCH' || true
    fi
  done | tee -a "$tmp/bench.log"
  # Nano-width: the reference model of tests/test_nano_width.c as a checkpoint
  windows=${NEMOQ_NANO_WINDOWS:-4}
  if "$NEMOQ_GPU_BIN/nemoq-gen-nano-width" "$tmp/nanow" --config tests/fixtures/nano_width/config.json >/dev/null; then
    cp models/tiny-nemotron-h/tokenizer.json "$tmp/nanow/" 2>/dev/null || true
    python3 -c "import numpy as np; np.random.default_rng(0).integers(3, 512, size=$windows * 2048, dtype=np.int32).tofile('$tmp/nanow_ids.i32')"
    python3 -c "import numpy as np; np.random.default_rng(1).integers(3, 512, size=32 * 2048, dtype=np.int32).tofile('$tmp/nanow_ids32.i32')"
    # streamed every pass (default GEMM mode), then resident after the
    # first pass in each GEMM mode (NEMOQ_CUDA_GEMM); 32 windows: nemoq
    # alone (transformers' pure-PyTorch Mamba path runs out of memory)
    { NEMOQ_BENCH_TAG=nanow "$NEMOQ_GPU_BIN/nemoq-gpu-test" --bench-backbone "$tmp/nanow" \
        "$tmp/nanow_ids.i32" 2048 "$windows" || true
      for mode in f32 bf16x3 bf16x3k bf16x2; do
        NEMOQ_CUDA_GEMM=$mode NEMOQ_BENCH_TAG=nanow NEMOQ_BENCH_RESIDENT=1 "$NEMOQ_GPU_BIN/nemoq-gpu-test" \
          --bench-backbone "$tmp/nanow" "$tmp/nanow_ids.i32" 2048 "$windows" || true
      done
      for mode in f32 bf16x3; do
        NEMOQ_CUDA_GEMM=$mode NEMOQ_BENCH_TAG=nanow-32windows NEMOQ_BENCH_RESIDENT=1 \
          "$NEMOQ_GPU_BIN/nemoq-gpu-test" --bench-backbone "$tmp/nanow" "$tmp/nanow_ids32.i32" 2048 32 || true
      done
      NEMOQ_BENCH_TAG=nanow python3 "$bench" "$tmp/nanow" "$tmp/nanow_ids.i32" 2048 "$windows" backbone 2>&1 |
        grep -E '^BENCH|Error' || true; } | tee -a "$tmp/bench.log"
  else
    echo "nano-width benchmark skipped: nemoq-gen-nano-width failed"
  fi
  # Ratios: the best nemoq GPU line of each case over transformers' bf16 line.
  echo "benchmark 1 (forward tokens/s, same run, same tokens; ratio = nemoq / transformers bf16):"
  awk 'match($0, /^BENCH\[[^ ]+ [^]]+\]/) {
         split(substr($0, 7, RLENGTH - 7), k, " "); tps = 0
         if (match($0, /[0-9.]+ tokens\/s/)) tps = substr($0, RSTART, RLENGTH - 9) + 0
         if (tps > best[k[1] " " k[2]]) best[k[1] " " k[2]] = tps; cases[k[1]] = 1 }
       END { for (c in cases) { t = best[c " transformers-bf16"]; if (!t) continue
               for (w in best) { split(w, p, " "); if (p[1] == c && p[2] ~ /^nemoq-gpu/)
                 printf "  %-22s %-15s %12.0f tok/s  transformers bf16 %12.0f tok/s  ratio %.2fx\n",
                        c, p[2], best[w], t, best[w] / t } } }' "$tmp/bench.log" | sort
else
  echo "transformers benchmark skipped: python3 lacks torch/transformers with CUDA"
fi
exit $status
