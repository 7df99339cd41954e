#!/usr/bin/env bash
# quantize --rounding: whole-model weights against NVIDIA ModelOpt 0.47's own
# uniform NVFP4 and FP8 exports of the bundled model, made on the CPU and on
# an H200 (bench/modelopt_autoq.sh; per-module SHA-256 digests of weight,
# weight_scale and weight_scale_2 in tests/fixtures/modelopt_model/, see
# tests/gen/gen_modelopt_model_hashes.py).  The default (exact division) is
# ModelOpt-on-the-CPU; --rounding modelopt-cuda is ModelOpt-on-CUDA.  Both
# include the q/k/v of an attention layer sharing one NVFP4 weight_scale_2
# (the max of the three amax, ModelOpt's preprocess_linear_fusion): before
# nemoq did that, layer 3's k and v and layer 8's q and k differed.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
fx="$src/tests/fixtures/modelopt_model"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }

q() { # q OUT FORMAT [--rounding R]: every searchable Linear in FORMAT, weights only
  local out=$1 fmt=$2; shift 2
  "$bin" quantize "$model" "$tmp/$out" --recipe "$fmt-conservative" --include "*=$fmt" \
    --exclude lm_head --weights-only --threads 2 "$@" > "$tmp/$out.log" 2>&1
}
# differ REF DIR: the modules whose digest differs from the fixture, sorted
differ() {
  python3 - "$fx/$1.json" "$tmp/$2" "$src/tests/gen" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[3])
from gen_modelopt_model_hashes import digests
ref = json.load(open(sys.argv[1]))["modules"]
got = digests(sys.argv[2])
assert set(ref) == set(got), "module sets differ"
print(" ".join(sorted(k for k in ref if ref[k] != got[k])))
PY
}

q nv nvfp4
q nv-cuda nvfp4 --rounding modelopt-cuda
q f8 fp8
q f8-cuda fp8 --rounding modelopt-cuda
check "exports written" '[ -f "$tmp/nv/model.safetensors" ] && [ -f "$tmp/nv-cuda/model.safetensors" ] && [ -f "$tmp/f8/model.safetensors" ] && [ -f "$tmp/f8-cuda/model.safetensors" ]'

d=$(differ nvfp4-cpu nv)
check "NVFP4 default = ModelOpt on the CPU, all 188 modules ($d)" '[ -z "$d" ]'
d=$(differ nvfp4-cuda nv-cuda)
check "NVFP4 --rounding modelopt-cuda = ModelOpt on an H200, all 188 modules ($d)" '[ -z "$d" ]'
n=$(differ nvfp4-cuda nv | wc -w)
check "NVFP4 default differs from the CUDA export in more modules ($n)" '[ "$n" -gt 30 ]'
d=$(differ fp8-cpu f8)
check "FP8 default = ModelOpt on the CPU ($d)" '[ -z "$d" ]'
d=$(differ fp8-cuda f8-cuda)
check "FP8 --rounding modelopt-cuda = ModelOpt on an H200 ($d)" '[ -z "$d" ]'
n=$(differ fp8-cuda f8 | wc -w)
check "FP8 default differs from the CUDA export ($n modules)" '[ "$n" -gt 100 ]'

out=$("$bin" quantize "$model" "$tmp/bad" --recipe nvfp4-conservative --weights-only --rounding gpu 2>&1); rc=$?
check "a bad --rounding is refused ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"--rounding '"'"'gpu'"'"': expected exact or modelopt-cuda"* ]] && [ ! -e "$tmp/bad" ]'

echo "cli_modelopt_rounding: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
