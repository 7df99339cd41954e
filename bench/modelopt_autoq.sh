#!/usr/bin/env bash
# GPU side of the ModelOpt peer runs (README "AutoQuantize" and the
# --modelopt-gpu-rounding fixtures): NVIDIA ModelOpt 0.47 on the bundled
# model, on a CUDA machine with torch and transformers but no internet.
#   bench/modelopt_autoq.sh WHEELS_DIR OUTDIR [BITS]
# WHEELS_DIR holds nvidia-modelopt and the dependencies the machine lacks
# (for the project's GPU image: pydantic, pydantic-core, annotated-types,
# typing-inspection, typing-extensions, omegaconf, pulp), fetched elsewhere
# with `pip download --no-deps`.  OUTDIR gets one .tar.xz export per run and
# log.txt; unpack the exports and evaluate them with `nemoq eval` (see
# README).
#
# BITS is ModelOpt's effective_bits constraint.  nemoq's budget 6.0041
# (nvfp4-conservative's 5.7041 + 0.3, over the 188 searchable Linear modules,
# 11,315,200 weights) charges 4.5/8/16 bits per weight plus 64 bits per
# quantized module for its two F32 scales; ModelOpt charges 4.5/8/16 bits per
# weight and nothing per module.  Subtracting the largest possible per-module
# charge (188 x 64 / 11,315,200 = 0.00106) gives 6.00303: every plan ModelOpt
# may choose under it is within nemoq's 6.0041 by nemoq's own accounting.
set -u
here=$(cd "$(dirname "$0")" && pwd)
wheels=$1; out=$2; bits=${3:-6.00303}
root=$(cd "$here/.." && pwd)
[ -f "$root/models/tiny-nemotron-h/config.json" ] || root=$(cd "$here/../.." && pwd)
cd "$root" || exit 1
log=$out/log.txt
{
  date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)'
} > "$log" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/mosite \
  "$wheels"/*.whl >> "$log" 2>&1 || { echo "pip install failed" >> "$log"; exit 1; }
export PYTHONPATH=/tmp/mosite PYTHONUNBUFFERED=1
work=/tmp/mowork; rm -rf "$work"; mkdir -p "$work"
for mode in autoq-kl_div autoq-gradient ptq-nvfp4 ptq-fp8; do
  echo "=== $mode $(date -u +%T)" >> "$log"
  SECONDS=0
  timeout 170 python3 "$here/modelopt_autoq.py" "$mode" models/tiny-nemotron-h \
    tests/fixtures/calib.txt "$work/$mode" --bits "$bits" --device cuda > "$work/$mode.log" 2>&1
  echo "rc $? after $SECONDS s" >> "$log"
  # the progress bars and per-step prints are long: keep their ends
  grep -v -E 'it/s|s/it' "$work/$mode.log" | tail -60 >> "$log"
  [ -d "$work/$mode" ] && tar cJf "$out/$mode.tar.xz" -C "$work" "$mode"
done
# the per-tensor ModelOpt fixtures (tests/fixtures/formats/*_cuda.bin) on this GPU
echo "=== gen_modelopt_fixtures $(date -u +%T)" >> "$log"
mkdir -p "$work/formats"
timeout 60 python3 tests/gen/gen_modelopt_fixtures.py "$work/formats" cuda >> "$log" 2>&1
echo "rc $?" >> "$log"
tar cJf "$out/formats.tar.xz" -C "$work" formats
date -u >> "$log"
