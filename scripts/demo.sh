#!/usr/bin/env bash
# The main job on the bundled model: installs dependencies, builds, and runs
# nemoq on models/tiny-nemotron-h: describe it, quantize it to W4A4 NVFP4
# with NVIDIA's conservative recipe, calibrated on the first half of
# tests/fixtures/calib.txt, check the output, and measure perplexity and KL
# against the BF16 model on the other half.  Output goes to ./demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
out=demo-out
mkdir -p "$out"
head -c 375000 tests/fixtures/calib.txt > "$out/calib.txt"
tail -c +375001 tests/fixtures/calib.txt > "$out/heldout.txt"
./build/nemoq inspect models/tiny-nemotron-h
./build/nemoq quantize models/tiny-nemotron-h "$out/tiny-nvfp4" --recipe nvfp4-conservative \
  --calib "$out/calib.txt" --calib-samples 64 --calib-len 256 --force \
  --report "$out/report" --eval "$out/heldout.txt" --eval-windows 16
./build/nemoq verify "$out/tiny-nvfp4" --against models/tiny-nemotron-h | tail -2
echo "report: $out/report.html"
