#!/usr/bin/env bash
# Calibration on the GPU at Nemotron 3 Nano's shapes (README, "GPU backend",
# benchmarks 2 and 3): a synthetic checkpoint of Nano's first N layers
# (bench/gen_synthetic.c), the bundled tokenizer, calib.txt five times over
# (1.27 M tokens), then `quantize --recipe RECIPE --calib ... --calib-samples
# S --calib-len 2048 --device cuda`, whose summary gives the time per layer
# by kind, the peak GPU memory nemoq allocated and the peak host RSS; then
# GPTQ of one Nano MoE layer's 128 experts, GPU vs CPU (nemoq-gpu-test
# --bench-gptq-moe).
#
#   bench/calib_gpu_bench.sh BIN_DIR [--layers N] [--samples S] [--dir DIR]
#                            [--recipe R] [--cpu-experts K]
#
# BIN_DIR holds nemoq, nemoq-gen-synthetic and nemoq-gpu-test built with
# -DNEMOQ_CUDA=ON.  Needs about 1.2 GB of disk per MoE layer (plus 1.4 GB of
# embeddings and head) for the checkpoint and half that for the output.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1; shift
layers=6; samples=512; dir=/tmp/nemoq-calib-bench; recipe=nvfp4-conservative; cpu_experts=2
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers=$2; shift 2;;
    --samples) samples=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    --recipe) recipe=$2; shift 2;;
    --cpu-experts) cpu_experts=$2; shift 2;;
    *) echo "calib_gpu_bench.sh: unknown argument $1" >&2; exit 2;;
  esac
done
mkdir -p "$dir"
rm -rf "$dir/in" "$dir/out"
start=$SECONDS
"$bin/nemoq-gen-synthetic" tests/fixtures/nemotron-3-nano-30b-a3b.config.json "$dir/in" \
  --layers "$layers" | tail -1
echo "generated in $((SECONDS - start)) s"
cp models/tiny-nemotron-h/tokenizer.json "$dir/in/"
for _ in 1 2 3 4 5; do cat tests/fixtures/calib.txt; done > "$dir/calib.txt"
start=$SECONDS
"$bin/nemoq" quantize "$dir/in" "$dir/out" --recipe "$recipe" --calib "$dir/calib.txt" \
  --calib-samples "$samples" --calib-len 2048 --device cuda
echo "quantize: $((SECONDS - start)) s wall"
"$bin/nemoq-gpu-test" --bench-gptq-moe "$cpu_experts"
