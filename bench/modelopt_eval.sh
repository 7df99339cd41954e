#!/usr/bin/env bash
# CPU side of the ModelOpt peer runs: unpack what bench/modelopt_autoq.sh
# brought back, verify and evaluate each export with nemoq on the held-out
# part of calib.txt (as bench/autoq_table.sh), and write ModelOpt's own
# AutoQuantize plans re-solved at nemoq's budget (bench/modelopt_plan_at_budget.py)
# with nemoq's exporter.
#   bench/modelopt_eval.sh GPU_OUT_DIR [WORKDIR] [BITS]
# ModelOpt 0.47 corrupts every module name it maps back to NemotronH's
# "backbone." names (".\u0000backbone.pt_name_sentinel" appended; see README,
# "verify"): in a MIXED_PRECISION export that includes the quantized_layers
# keys, which vLLM then cannot find, and the NUL in a JSON object key is
# refused by jansson, so nemoq cannot read those files at all.  The copy
# evaluated here ("-fixed") has the suffix removed, which is what ModelOpt
# meant to write.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh >/dev/null
src=$1; dir=${2:-/tmp/nemoq-modelopt}; bits=${3:-6.0041}; mkdir -p "$dir"
head -c 375000 tests/fixtures/calib.txt > "$dir/calib.txt"
tail -c +375001 tests/fixtures/calib.txt > "$dir/heldout.txt"
for t in "$src"/*.tar.xz; do tar xJf "$t" -C "$dir"; done
for m in autoq-kl_div autoq-gradient ptq-nvfp4 ptq-fp8; do
  [ -d "$dir/$m" ] || continue
  rm -rf "$dir/$m-fixed"; cp -r "$dir/$m" "$dir/$m-fixed"
  sed -i 's/\.\\u0000backbone\.pt_name_sentinel//g' "$dir/$m-fixed"/*.json
  echo "== $m"; ./build/nemoq verify "$dir/$m-fixed" | tail -n 2
  ./build/nemoq eval "$dir/$m-fixed" --text "$dir/heldout.txt" --windows 64 \
    --against models/tiny-nemotron-h | tail -n 3
done
for m in gradient kl_div; do
  [ -f "$dir/autoq-$m/modelopt_run.json" ] || continue
  rules=$(python3 bench/modelopt_plan_at_budget.py "$dir/autoq-$m/modelopt_run.json" \
          models/tiny-nemotron-h "$bits")
  # shellcheck disable=SC2086  # the rules are "--include MODULE=FORMAT" words
  ./build/nemoq quantize models/tiny-nemotron-h "$dir/mo-$m-$bits" --recipe nvfp4-conservative \
    $rules --calib "$dir/calib.txt" --calib-samples 64 --calib-len 256 \
    --eval "$dir/heldout.txt" --eval-windows 64 --force --report "$dir/mo-$m-$bits" | tail -n 1
done
