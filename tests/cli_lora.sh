#!/usr/bin/env bash
# LoRA end to end: `nemoq merge` then `quantize` gives the same bytes as
# `quantize --lora` (weights-only and calibrated with GPTQ, where the
# calibration forward pass reads the merged weights too); inspect describes
# an adapter; config.json and the report record the merge; refusals are one
# line with nothing left behind.  The merged values themselves are checked
# against PEFT in test_lora.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
fx="$src/tests/fixtures/lora"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
head -c 100000 "$src/tests/fixtures/calib.txt" > "$tmp/calib.txt"
cal="--calib $tmp/calib.txt --calib-samples 2 --calib-len 64"

out=$("$bin" merge "$model" "$tmp/merged" --lora "$fx/plain_backbone" --lora "$fx/experts_native:0.5" 2>"$tmp/err"); rc=$?
check "merge ($(cat "$tmp/err"))" '[ $rc -eq 0 ] && [[ "$out" == *"merged LoRA plain_backbone (weight 1, r 8, alpha 16): 40 LoRA modules on 40 tensors"* ]]'
check "merge notes the untrained out_proj" '[[ "$out" == *"1 Mamba out_proj LoRA(s) have B = 0"* ]]'
check "merged config records both adapters" 'grep -q "\"nemoq_merged_adapters\"" "$tmp/merged/config.json" && grep -q "\"name\": \"experts_native\"" "$tmp/merged/config.json"'
check "merged config keeps the original bytes first" 'head -c $(($(stat -c %s "$model/config.json") - 3)) "$model/config.json" | cmp -s - <(head -c $(($(stat -c %s "$model/config.json") - 3)) "$tmp/merged/config.json")'
check "merged model keeps its dtype and size" '[ $(stat -c %s "$tmp/merged/model.safetensors") -eq $(stat -c %s "$model/model.safetensors") ]'
check "tokenizer copied" 'cmp -s "$model/tokenizer.json" "$tmp/merged/tokenizer.json"'
check "merged model verifies as a model" '"$bin" inspect "$tmp/merged" >/dev/null'

lora="--lora $fx/plain_backbone --lora $fx/experts_native:0.5"
"$bin" quantize "$tmp/merged" "$tmp/q_after" --recipe nvfp4-aggressive --weights-only >/dev/null
out=$("$bin" quantize "$model" "$tmp/q_while" --recipe nvfp4-aggressive --weights-only $lora); rc=$?
check "quantize --lora" '[ $rc -eq 0 ] && [[ "$out" == *"merged LoRA experts_native (weight 0.5"* ]]'
check "weights-only: merge-then-quantize == quantize --lora (byte for byte)" 'diff -r "$tmp/q_after" "$tmp/q_while" >/dev/null'
"$bin" quantize "$model" "$tmp/g_while" --recipe int4 --algo gptq $cal $lora --report "$tmp/rep" >/dev/null; rc=$?
check "calibrated gptq with --lora" '[ $rc -eq 0 ]'
# the reference run is plain GPTQ, which cli_calibrate runs under the
# sanitizers; the byte comparison is the release build's
if [ -z "${NEMOQ_SANITIZED:-}" ]; then
  "$bin" quantize "$tmp/merged" "$tmp/g_after" --recipe int4 --algo gptq $cal >/dev/null
  check "calibrated gptq: merge-then-quantize == quantize --lora (byte for byte)" 'diff -r "$tmp/g_after" "$tmp/g_while" >/dev/null'
fi
"$bin" quantize "$model" "$tmp/q_base" --recipe nvfp4-aggressive --weights-only >/dev/null
check "... and differs from quantizing without the adapters" '! cmp -s "$tmp/q_base/model.safetensors" "$tmp/q_while/model.safetensors"'
check "report records the adapters" 'grep -q "\"lora_adapters\"" "$tmp/rep.json"'

out=$("$bin" inspect "$fx/dora_backbone")
check "inspect adapter" '[[ "$out" == *"r 8, lora_alpha 16, scaling 2, DoRA"* ]] && [[ "$out" == *"backbone.layers.4.mixer.experts.15.down_proj"* ]]'
out=$("$bin" inspect "$fx/experts_native" --base "$model")
check "inspect adapter --base" '[[ "$out" == *"lands on 37 tensors"* ]] && [[ "$out" == *"backbone.layers.1.mixer.experts.15.up_proj.weight"* ]]'
out=$("$bin" inspect "$fx/patterns_backbone" --json)
check "inspect adapter --json" '[[ "$out" == *"\"rank_pattern\""* ]]'

err=$("$bin" merge "$model" "$tmp/x" --lora "$fx/err_bin" 2>&1); rc=$?
check "adapter_model.bin refused" '[ $rc -eq 1 ] && [[ "$err" == *"convert it once with"* ]] && [ $(printf "%s\n" "$err" | wc -l) -eq 1 ] && [ ! -e "$tmp/x" ]'
err=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --lora "$fx/err_shape" 2>&1); rc=$?
check "bad adapter refused before writing" '[ $rc -eq 1 ] && [[ "$err" == *"do not fit"* ]] && [ ! -e "$tmp/x" ]'
err=$("$bin" merge "$model" "$tmp/x" 2>&1); rc=$?
check "merge without --lora" '[ $rc -eq 2 ] && [[ "$err" == *"no --lora adapter given"* ]]'
err=$("$bin" merge "$model" "$tmp/x" --lora "$fx/nonexistent:x1" 2>&1); rc=$?
check "bad WEIGHT" '[ $rc -eq 2 ] && [[ "$err" == *"DIR:WEIGHT"* ]]'
err=$("$bin" merge "$model" "$tmp/x" --lora "$tmp" 2>&1); rc=$?
check "not an adapter directory" '[ $rc -eq 1 ] && [[ "$err" == *"no adapter_model.safetensors"* ]]'

echo "cli_lora: $pass passed, $fail failed"
[ $fail -eq 0 ]
