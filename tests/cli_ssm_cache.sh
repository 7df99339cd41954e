#!/usr/bin/env bash
# nemoq eval --decode / --ssm-cache and quantize --ssm-cache-dtype end to
# end on the bundled model: the config key is spliced with every original
# byte kept; decode mode on a calibrated W4A4 NVFP4 + FP8-KV checkpoint runs
# the emulation together with the rounded SSM state, equals window mode with
# an f32 state, repeats for any thread count; the report carries the KL plot;
# bad flags fail cleanly.  Small windows: decoding is token by token.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
head -c 100000 "$src/tests/fixtures/calib.txt" > "$tmp/calib.txt"
tail -c 20000 "$src/tests/fixtures/calib.txt" > "$tmp/eval.txt"
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

"$bin" quantize "$model" "$tmp/q" --recipe nvfp4-conservative --calib "$tmp/calib.txt" \
  --calib-samples 4 --calib-len 64 --ssm-cache-dtype float16 >/dev/null 2>"$tmp/err"; rc=$?
check "quantize with --ssm-cache-dtype ($(cat "$tmp/err"))" '[ $rc -eq 0 ]'
check "config.json: mamba_ssm_cache_dtype float16" '[ "$(jget "$tmp/q/config.json" "d[\"mamba_ssm_cache_dtype\"]")" = float16 ]'
# NVIDIA's configs already say "float32": the value is rewritten in place
orig=$(wc -c < "$model/config.json")
sed 's/"mamba_ssm_cache_dtype": "float32"/"mamba_ssm_cache_dtype": "float16"/' "$model/config.json" | head -c $((orig - 3)) > "$tmp/want"
check "config.json keeps every other original byte" 'cmp -s "$tmp/want" <(head -c $((orig - 3)) "$tmp/q/config.json")'
# a config without the key gets it spliced in
mkdir "$tmp/m2"
for f in "$model"/*; do ln -s "$f" "$tmp/m2/"; done
rm "$tmp/m2/config.json"
grep -v '"mamba_ssm_cache_dtype"' "$model/config.json" > "$tmp/m2/config.json"
"$bin" quantize "$tmp/m2" "$tmp/q2" --recipe int4 --ssm-cache-dtype bfloat16 >/dev/null 2>"$tmp/err"; rc=$?
check "splice when absent ($(cat "$tmp/err"))" '[ $rc -eq 0 ] && [ "$(jget "$tmp/q2/config.json" "d[\"mamba_ssm_cache_dtype\"]")" = bfloat16 ]'
err=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --ssm-cache-dtype fp16 2>&1); rc=$?
check "bad --ssm-cache-dtype" '[ $rc -eq 2 ] && [[ "$err" == *"--ssm-cache-dtype '"'"'fp16'"'"'"* ]] && [ ! -e "$tmp/x" ]'

common="--text $tmp/eval.txt --ctx 20 --windows 2 --against $model"
"$bin" eval "$tmp/q" $common --json > "$tmp/win.json" 2>/dev/null
"$bin" eval "$tmp/q" $common --decode --prefill 3 --ssm-cache fp32,fp16,fp16-sr \
  --philox-rounds 5 --seed 7 --kl-bucket 5 --threads 1 --json --report "$tmp/rep" > "$tmp/d1.json" 2>"$tmp/err"; rc=$?
check "decode on nvfp4+fp8kv ($(cat "$tmp/err"))" '[ $rc -eq 0 ]'
check "emulation active in decode mode" '[ "$(jget "$tmp/d1.json" "d[\"emulated\"][\"nvfp4_activations\"]>0 and d[\"emulated\"][\"fp8_kv_layers\"]==2")" = True ]'
check "three modes, 4 KL buckets each" '[ "$(jget "$tmp/d1.json" "[len(m[\"kl_by_position\"]) for m in d[\"decode\"][\"modes\"]]")" = "[4, 4, 4]" ]'
dn=$(jget "$tmp/d1.json" 'd["decode"]["modes"][0]["nll"]'); wn=$(jget "$tmp/win.json" 'd["nll"]')
check "decode (fp32 state) = window mode with emulation ($dn vs $wn)" "python3 -c 'import sys; sys.exit(abs($dn-$wn) > 1e-4)'"
check "rounded states change KL" '[ "$(jget "$tmp/d1.json" "[m[\"kl\"] != d[\"decode\"][\"modes\"][0][\"kl\"] for m in d[\"decode\"][\"modes\"][1:]]")" = "[True, True]" ]'
"$bin" eval "$tmp/q" $common --decode --prefill 3 --ssm-cache fp32,fp16,fp16-sr \
  --philox-rounds 5 --seed 7 --kl-bucket 5 --threads 2 --json > "$tmp/d2.json" 2>/dev/null
check "same numbers with 1 and 2 threads" 'cmp -s "$tmp/d1.json" "$tmp/d2.json"'
check "report: KL-by-position series and an SVG plot" '[ "$(jget "$tmp/rep.json" "len(d[\"kl_by_position\"][\"series\"])")" = 3 ] && grep -q "<polyline" "$tmp/rep.html"'
sed -n '/<svg/,/<\/svg>/p' "$tmp/rep.html" > "$tmp/plot.svg"
check "the SVG is well-formed XML" 'python3 -c "import sys,xml.etree.ElementTree as E; E.parse(sys.argv[1])" "$tmp/plot.svg"'

cp -r "$tmp/q" "$tmp/qcopy"
err=$("$bin" eval "$tmp/qcopy" --text "$tmp/eval.txt" --ctx 16 --windows 1 --report "$tmp/qcopy/r" 2>&1); rc=$?
check "eval --report inside the model refused ($err)" '[ $rc -eq 1 ] && [ ! -e "$tmp/qcopy/r.json" ] && diff -r "$tmp/q" "$tmp/qcopy" >/dev/null'
err=$("$bin" eval "$model" --text "$tmp/eval.txt" --ssm-cache fp16 2>&1); rc=$?
check "--ssm-cache without --decode" '[ $rc -eq 2 ] && [[ "$err" == *"need --decode"* ]]'
err=$("$bin" eval "$model" --text "$tmp/eval.txt" --decode --ssm-cache fp8 2>&1); rc=$?
check "unknown --ssm-cache mode" '[ $rc -eq 2 ] && [[ "$err" == *"--ssm-cache '"'"'fp8'"'"'"* ]]'
err=$("$bin" eval "$model" --text "$tmp/eval.txt" --decode --ssm-cache fp16,fp16 2>&1); rc=$?
check "repeated --ssm-cache mode" '[ $rc -eq 2 ]'
err=$("$bin" eval "$model" --text "$tmp/eval.txt" --ctx 16 --decode --prefill 16 2>&1); rc=$?
check "--prefill beyond the window ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"--prefill 16: must be 1..15"* ]] && [ $(printf "%s" "$err" | wc -l) -le 1 ]'
err=$("$bin" eval "$model" --text "$tmp/eval.txt" --decode --seed -1 2>&1); rc=$?
check "negative --seed" '[ $rc -eq 2 ]'
# a value flag last on the line: a usage error, not a crash
for f in --prefill --ssm-cache --philox-rounds --seed --kl-bucket --ctx --windows --skip-windows --threads; do
  err=$("$bin" eval "$model" --text "$tmp/eval.txt" --decode $f 2>&1); rc=$?
  check "eval $f without its value" '[ $rc -eq 2 ] && [[ "$err" == *"$f needs a value"* ]]'
done

echo "cli_ssm_cache: $pass passed, $fail failed"
[ $fail -eq 0 ]
