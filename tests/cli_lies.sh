#!/usr/bin/env bash
# Checkpoints that must never be written (issue 10, items 5-8 and 12): hostile
# inputs built from the bundled model by tests/gen/st_edit.py.  Each case must
# stop with exit 1, one line naming the tensor (and element) or the config
# field, and nothing at OUT; warnings and notes must say what is true.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
edit="python3 $src/tests/gen/st_edit.py"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
copy() { rm -rf "$tmp/$1"; mkdir -p "$tmp/$1"; cp "$model"/* "$tmp/$1/"; }
nothing_left() { [ ! -e "$tmp/out" ] && [ -z "$(ls -A "$tmp" | grep nemoq-tmp)" ]; }
head -c 20000 "$src/tests/fixtures/calib.txt" > "$tmp/calib.txt"
calib=(--calib "$tmp/calib.txt" --calib-samples 1 --calib-len 32)

# 6. NaN/Inf in any tensor that is written, quantized or copied
for spec in "backbone.embeddings.weight 300 nan" "lm_head.weight 7 inf" \
            "backbone.norm_f.weight 3 nan" "backbone.layers.0.mixer.A_log 1 nan" \
            "backbone.layers.0.mixer.D 2 -inf" "backbone.layers.0.mixer.norm.weight 2 nan" \
            "backbone.layers.1.mixer.gate.e_score_correction_bias 5 nan" \
            "backbone.layers.1.mixer.gate.weight 9 inf" \
            "backbone.layers.3.mixer.q_proj.weight 4 nan" \
            "backbone.layers.0.mixer.conv1d.weight 3 nan" "backbone.layers.0.mixer.conv1d.bias 1 inf"; do
  read -r t e v <<<"$spec"
  what=$([ "$v" = nan ] && echo NaN || echo infinite)
  # alternate the streaming INT4 path and the FP8 one
  n=$((${n:-0} + 1)); recipe=$([ $((n % 2)) -eq 0 ] && echo int4 || echo fp8-conservative)
  copy nan; $edit "$tmp/nan/model.safetensors" set "$t" "$e" "$v"
  err=$("$bin" quantize "$tmp/nan" "$tmp/out" --recipe $recipe --weights-only 2>&1); rc=$?
  check "$recipe: $v in $t stops the run ($err)" \
    '[ $rc -eq 1 ] && [[ "$err" == *"tensor '"'"'$t'"'"': element $e is $what"* ]] && nothing_left'
done
# ... and under calibration, where the tensor must be named before the layer
# runs (an Inf in a quantized in_proj used to surface as "NaN in the input
# of out_proj")
for spec in "backbone.layers.2.mixer.in_proj.weight 7 inf" "backbone.layers.4.mixer.experts.3.up_proj.weight 11 nan" \
            "backbone.layers.2.mixer.dt_bias 0 inf"; do
  read -r t e v <<<"$spec"
  what=$([ "$v" = nan ] && echo NaN || echo infinite)
  copy nan; $edit "$tmp/nan/model.safetensors" set "$t" "$e" "$v"
  err=$("$bin" quantize "$tmp/nan" "$tmp/out" --recipe nvfp4-aggressive "${calib[@]}" 2>&1); rc=$?
  check "calibrated: $v in $t named ($err)" \
    '[ $rc -eq 1 ] && [[ "$err" == *"tensor '"'"'$t'"'"': element $e is $what"* ]] && nothing_left'
done
# config values that make the float model produce NaN are refused at parse
for kv in 'layer_norm_epsilon=0' 'layer_norm_epsilon=-1e-5' 'layer_norm_epsilon={"__float__": "NaN"}' \
          'routed_scaling_factor={"__float__": "Infinity"}'; do
  copy cfg; python3 - "$tmp/cfg/config.json" "$kv" <<'PY'
import json, sys
p, kv = sys.argv[1], sys.argv[2]; k, v = kv.split("=", 1)
c = json.load(open(p)); c[k] = json.loads(v); json.dump(c, open(p, "w"))
PY
  err=$("$bin" quantize "$tmp/cfg" "$tmp/out" --recipe int4 2>&1); rc=$?
  key=${kv%%=*}
  check "config $kv refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"config.json: $key is"* ]] && nothing_left'
done

# 5. INT4 weights past what an F16 scale can hold: stop, naming the module
copy big; $edit "$tmp/big/model.safetensors" set backbone.layers.0.mixer.in_proj.weight 5 600000
err=$("$bin" quantize "$tmp/big" "$tmp/out" --recipe int4 2>&1); rc=$?
check "INT4 |w| 600000 stops ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"backbone.layers.0.mixer.in_proj.weight"*"largest |w| is 598016"*"scale would be infinite"*"--exclude"* ]] && nothing_left'
# 2 x 64 tokens: 128 rows reach in_proj, enough for GPTQ (no rtn fallback)
err=$("$bin" quantize "$tmp/big" "$tmp/out" --recipe int4 --calib "$tmp/calib.txt" --calib-samples 2 --calib-len 64 --algo gptq 2>&1); rc=$?
check "INT4 GPTQ |w| 600000 stops ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"backbone.layers.0.mixer.in_proj.weight"*"scale would be infinite"* ]] && nothing_left'
out=$("$bin" quantize "$tmp/big" "$tmp/out" --recipe int4 --exclude backbone.layers.0.mixer.in_proj 2>&1); rc=$?
check "excluding the module is the way out ($out)" '[ $rc -eq 0 ] && "$bin" verify "$tmp/out" --against "$tmp/big" >/dev/null'
rm -rf "$tmp/out"
copy big; $edit "$tmp/big/model.safetensors" set backbone.layers.0.mixer.in_proj.weight 5 458000
err=$("$bin" quantize "$tmp/big" "$tmp/out" --recipe int4 2>&1); rc=$?
check "INT4 |w| 458000 still fits" '[ $rc -eq 0 ] && "$bin" verify "$tmp/out" >/dev/null'
rm -rf "$tmp/out"

# 7. layers the config does not describe
copy short; python3 - "$tmp/short/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["layers_block_type"] = c["layers_block_type"][:11]; c["num_hidden_layers"] = 11
json.dump(c, open(p, "w"))
PY
for mode in plain calibrated; do
  extra=(); [ $mode = calibrated ] && extra=("${calib[@]}")
  err=$("$bin" quantize "$tmp/short" "$tmp/out" --recipe int4 "${extra[@]}" 2>&1); rc=$?
  check "$mode: tensors past the block pattern refused ($err)" \
    '[ $rc -eq 1 ] && [[ "$err" == *"belongs to layer 11, but config.json'"'"'s block pattern has 11 layers"* ]] && nothing_left'
done
copy extra; $edit "$tmp/extra/model.safetensors" rename backbone.layers.2.mixer.in_proj.weight backbone.layers.3.mixer.in_proj.weight
err=$("$bin" quantize "$tmp/extra" "$tmp/out" --recipe int4 2>&1); rc=$?
check "a Linear in the wrong kind of layer is refused ($err)" '[ $rc -eq 1 ] && nothing_left'

# 8. nothing quantizable
for rule in "--exclude=*" "--include=*=bf16"; do
  err=$("$bin" quantize "$model" "$tmp/out" --recipe int4 "${rule%%=*}" "${rule#*=}" 2>&1); rc=$?
  check "nothing quantized refused ($rule: $err)" '[ $rc -eq 1 ] && [[ "$err" == *"quantizes none of the 200 modules"* ]] && nothing_left'
done
err=$("$bin" quantize "$model" --recipe int4 --exclude '*' --dry-run 2>&1); rc=$?
check "dry-run says so too" '[ $rc -eq 1 ] && [[ "$err" == *"quantizes none"* ]]'

# 12. the smaller ones
printf 'plain words \xff\xfe then text\n' > "$tmp/bin.txt"; cat "$tmp/calib.txt" >> "$tmp/bin.txt"
err=$("$bin" quantize "$model" "$tmp/out" --recipe int4 --calib "$tmp/bin.txt" --calib-samples 1 --calib-len 32 2>&1 >/dev/null); rc=$?
check "invalid UTF-8 calibration text warned with its offset ($err)" '[ $rc -eq 0 ] && [[ "$err" == *"bin.txt: byte 12 (0xff) is not valid UTF-8"* ]]'
rm -rf "$tmp/out"
printf 'abc\0def' > "$tmp/nul.txt"; cat "$tmp/calib.txt" >> "$tmp/nul.txt"
err=$("$bin" quantize "$model" "$tmp/out" --recipe int4 --calib "$tmp/nul.txt" --calib-samples 1 --calib-len 32 2>&1 >/dev/null); rc=$?
check "binary calibration data warned ($err)" '[ $rc -eq 0 ] && [[ "$err" == *"nul.txt: byte 3 (0x00) is a NUL byte"* ]]'
rm -rf "$tmp/out"
err=$("$bin" quantize "$model" "$tmp/out" --recipe int4 --calib "$tmp/calib.txt" --calib-samples 1 --calib-len 32 2>&1 >/dev/null)
check "clean text gives no warning" '[[ "$err" != *warning* ]]'
rm -rf "$tmp/out"
out=$("$bin" quantize "$model" "$tmp/out" --recipe fp8-conservative --weights-only 2>&1)
check "fp8 --weights-only note does not mention NVFP4 ($out)" '[[ "$out" == *"NOT servable as W8A8"* ]] && [[ "$out" != *NVFP4* ]]'
rm -rf "$tmp/out"
out=$("$bin" quantize "$model" "$tmp/out" --recipe nvfp4-conservative --weights-only 2>&1)
check "nvfp4 --weights-only note" '[[ "$out" == *"NOT servable as W4A4 (it is declared W4A16_NVFP4"* ]]'
rm -rf "$tmp/out"
echo '{"preset": "int4", "exclude": ["backbone.layers.3.*"]}' > "$tmp/recipe.json"
out=$("$bin" quantize "$model" --recipe-file "$tmp/recipe.json" --dry-run)
check "recipe-file rules reported as such" '[[ "$out" == *"recipe file $tmp/recipe.json: exclude backbone.layers.3.*"* ]] && [[ "$out" != *"--exclude"* ]]'
echo '{"preset": "int4", "exclude": ["backbone.layer.*"]}' > "$tmp/recipe.json"
err=$("$bin" quantize "$model" --recipe-file "$tmp/recipe.json" --dry-run 2>&1)
check "recipe-file rule matching nothing names the file" '[[ "$err" == *"recipe.json: exclude pattern '"'"'backbone.layer.*'"'"' matches no module"* ]]'
err=$("$bin" quantize "$model" "$tmp/out" --recipe int4 --calib "$tmp/calib.txt" --calib-len 100000000 2>&1); rc=$?
check "--calib-len states its real range ($err)" '[ $rc -eq 2 ] && [[ "$err" == *"expected an integer from 2 to 1048576"* ]]'
"$bin" quantize "$model" "$tmp/fp8" --recipe fp8-conservative --weights-only >/dev/null
$edit "$tmp/fp8/model.safetensors" bytes backbone.layers.1.mixer.experts.0.up_proj.weight 10 7f
err=$("$bin" eval "$tmp/fp8" --text "$tmp/calib.txt" --windows 2 2>&1); rc=$?
check "eval of an FP8 checkpoint with a NaN byte fails naming it ($err)" \
  '[ $rc -eq 1 ] && [[ "$err" == *"backbone.layers.1.mixer.experts.0.up_proj.weight'"'"': element 10 (row 0, column 10) is NaN"* ]]'
out=$("$bin" verify "$tmp/fp8" 2>&1); rc=$?
check "verify catches it too" '[ $rc -eq 1 ] && [[ "$out" == *"element 10 (row 0, column 10) is NaN"* ]]'
for kv in 'eos_token_id=1000000' 'eos_token_id=[2, 999999]' 'bos_token_id=-5' 'n_routed_experts=100000000' \
          'hidden_size=1000000' 'vocab_size=1073741824' 'conv_kernel=100000'; do
  copy cfg; python3 - "$tmp/cfg/config.json" "$kv" <<'PY'
import json, sys
p, kv = sys.argv[1], sys.argv[2]; k, v = kv.split("=", 1)
c = json.load(open(p)); c[k] = json.loads(v); json.dump(c, open(p, "w"))
PY
  key=${kv%%=*}
  err=$("$bin" quantize "$tmp/cfg" "$tmp/out" --recipe int4 2>&1); rc=$?
  check "config $kv refused at parse ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"config.json: "*"$key"* ]] && nothing_left'
  err=$("$bin" inspect "$tmp/cfg" 2>&1); rc=$?
  check "inspect refuses $kv too" '[ $rc -eq 1 ]'
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
