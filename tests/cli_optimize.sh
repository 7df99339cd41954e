#!/usr/bin/env bash
# --optimize end to end on the bundled model: valid with every preset; the
# NVFP4 output is the plain ModelOpt NVFP4 layout (the same tensor names,
# dtypes and shapes as a plain run, quant_algo NVFP4) and passes verify; the
# bytes do not depend on the thread count, with every technique on; the
# summary says what was turned on; misuse fails with one clear line.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
head -c 100000 "$src/tests/fixtures/calib.txt" > "$tmp/calib.txt"
# routed experts kept in BF16: the techniques all run on the other modules,
# in a fraction of the time
cal="--calib $tmp/calib.txt --calib-samples 4 --calib-len 96 --exclude backbone.layers.*.mixer.experts.*"
# tensor names, dtypes and shapes of a checkpoint, without offsets
layout() {
  python3 - "$1/model.safetensors" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n))
for k in sorted(h):
    if k != "__metadata__":
        print(k, h[k]["dtype"], h[k]["shape"])
PY
}

calx="--calib $tmp/calib.txt --calib-samples 4 --calib-len 96"
# experts included here, so that the local_hessian fallback of experts with
# too few rows for GPTQ runs too
"$bin" quantize "$model" "$tmp/plain" --recipe nvfp4-conservative $calx >/dev/null 2>&1
"$bin" quantize "$model" "$tmp/opt" --recipe nvfp4-conservative $calx --optimize --report "$tmp/rep" \
  >"$tmp/out" 2>"$tmp/err"; rc=$?
check "nvfp4 --optimize runs ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ] && grep -q "^optimize: " "$tmp/out"'
check "the report names the techniques" 'grep -q "\"optimize\": \"" "$tmp/rep.json"'
check "experts with few rows: local_hessian scales" 'grep -q "rtn+local-hessian" "$tmp/rep.json"'
out=$("$bin" verify "$tmp/opt" --against "$model" 2>&1); rc=$?
check "nvfp4 --optimize verifies ($(printf '%s' "$out" | tail -1))" '[ $rc -eq 0 ] && [[ "$out" != *warning* ]]'
"$bin" quantize "$model" "$tmp/plainx" --recipe nvfp4-conservative $cal >/dev/null 2>&1
check "plain ModelOpt NVFP4 layout (same tensors as without --optimize)" \
  '[ "$(layout "$tmp/opt")" = "$(layout "$tmp/plain")" ] && grep -q "\"quant_algo\": \"NVFP4\"" "$tmp/opt/hf_quant_config.json"'
check "the weights differ from the plain run" '! cmp -s "$tmp/opt/model.safetensors" "$tmp/plain/model.safetensors"'

# every technique, one and three threads: identical bytes
all="--optimize-techniques served-hessian,hessian-scales,global-sweep,act-mse"
"$bin" quantize "$model" "$tmp/all1" --recipe nvfp4-conservative --algo gptq $cal $all --threads 1 >"$tmp/all.out" 2>&1; rc1=$?
"$bin" quantize "$model" "$tmp/all3" --recipe nvfp4-conservative --algo gptq $cal $all --threads 3 >/dev/null 2>&1; rc3=$?
check "all techniques run" '[ $rc1 -eq 0 ] && [ $rc3 -eq 0 ]'
check "byte-identical for 1 and 3 threads" 'cmp -s "$tmp/all1/model.safetensors" "$tmp/all3/model.safetensors"'
out=$("$bin" verify "$tmp/all1" --against "$model" 2>&1); rc=$?
check "all techniques verify" '[ $rc -eq 0 ]'
"$bin" quantize "$model" "$tmp/pct" --recipe nvfp4-conservative $cal --algo gptq --optimize-techniques act-percentile,four-over-six >/dev/null 2>&1; rc=$?
check "act-percentile + four-over-six" '[ $rc -eq 0 ] && [ "$(layout "$tmp/pct")" = "$(layout "$tmp/plainx")" ] && "$bin" verify "$tmp/pct" >/dev/null 2>&1'

# every preset takes --optimize
for r in fp8-conservative int4; do
  "$bin" quantize "$model" "$tmp/$r" --recipe "$r" $cal --optimize --report "$tmp/$r.json" >/dev/null 2>"$tmp/err"; rc=$?
  check "$r --optimize ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ] && "$bin" verify "$tmp/$r" >/dev/null 2>&1'
done
# INT4 under --optimize runs GPTQ in act-order (int4-act-order), layout unchanged
check "int4 --optimize: GPTQ in act-order, desc_act stays false" 'grep -q "\"gptq+act-order+mse\"" "$tmp/int4.json" && grep -q "\"desc_act\": false" "$tmp/int4/quantize_config.json"'

# equalize-nvfp4 (off in plain --optimize): the gated pairs with NVFP4
# readers, none with INT4 ones; plain layout, verifies structurally (against
# the source, out_proj's rescaled columns are rightly reported)
"$bin" quantize "$model" "$tmp/eq" --recipe nvfp4-conservative $calx --optimize-techniques default,equalize-nvfp4 --algo gptq >"$tmp/out" 2>"$tmp/err"; rc=$?
check "nvfp4 equalize-nvfp4 equalizes the gated pairs ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ] && grep -q "^equalize: [1-9]" "$tmp/out" && grep -q "^optimize: hessian-scales,equalize-nvfp4" "$tmp/out"'
check "nvfp4 equalize-nvfp4: plain layout, verifies" '[ "$(layout "$tmp/eq")" = "$(layout "$tmp/plain")" ] && "$bin" verify "$tmp/eq" >/dev/null 2>&1'
"$bin" quantize "$model" "$tmp/eq4" --recipe int4 $cal --optimize-techniques equalize-nvfp4 --algo gptq >"$tmp/out" 2>"$tmp/err"; rc=$?
check "int4 equalize-nvfp4: no pair equalized ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ] && grep -q "^equalize: 0 of 0 " "$tmp/out"'

# misuse
out=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --optimize 2>&1); rc=$?
check "--optimize without --calib ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"--optimize needs --calib"* ]] && [ ! -e "$tmp/x" ]'
out=$("$bin" quantize "$model" "$tmp/x" --recipe nvfp4-conservative $cal --optimize-techniques served-hessian 2>&1); rc=$?
check "served-hessian without gptq ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"add --algo gptq"* ]]'
out=$("$bin" quantize "$model" "$tmp/x" --recipe nvfp4-conservative $cal --optimize-techniques nope 2>&1); rc=$?
check "unknown technique ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"unknown technique '"'"'nope'"'"'"* ]] && [ $(printf "%s\n" "$out" | wc -l) -le 2 ]'
out=$("$bin" quantize --help 2>&1)
check "--help lists the techniques" '[[ "$out" == *"hessian-scales"* ]]'

echo "cli_optimize: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
