#!/usr/bin/env bash
# `nemoq verify` catches every tampering of a quantized checkpoint that a
# loader would not (issue 10, item 10): each case starts from a clean output
# of the bundled model that verifies, changes one stored word or declared
# field, and must give exit 1 with a problem line naming it.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
edit="python3 $src/tests/gen/st_edit.py"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
# jset FILE a/b/c JSON: sets (or with DELETE removes) a nested key
jset() { python3 - "$@" <<'PY'
import json, sys
p, path, val = sys.argv[1], sys.argv[2], sys.argv[3]
d = json.load(open(p)); o = d; keys = path.split("/")
keys = [int(k) if k.isdigit() else k for k in keys]
for k in keys[:-1]: o = o[k]
if val == "DELETE": del o[keys[-1]]
elif val.startswith("+"): o[keys[-1]].append(json.loads(val[1:]))
else: o[keys[-1]] = json.loads(val)
json.dump(d, open(p, "w"), indent=2)
PY
}
fresh() { rm -rf "$tmp/t"; cp -r "$tmp/$1" "$tmp/t"; }
# expect DESCRIPTION SUBSTRING: verify of $tmp/t must fail with that problem
expect() {
  want=$2
  out=$("$bin" verify "$tmp/t" 2>&1); rc=$?
  check "$1 ($(printf '%s' "$out" | grep problem | head -2 | tr '\n' ' '))" '[ $rc -eq 1 ] && [[ "$out" == *"$want"* ]]'
}
for r in int4 nvfp4-conservative fp8-conservative; do
  "$bin" quantize "$model" "$tmp/$r" --recipe $r --weights-only >/dev/null
done
"$bin" quantize "$model" "$tmp/mixed" --recipe nvfp4-conservative --weights-only \
  --include 'backbone.layers.0.mixer.*_proj=fp8' >/dev/null
for r in int4 nvfp4-conservative fp8-conservative mixed; do
  check "clean $r verifies" '"$bin" verify "$tmp/$r" --against "$model" >/dev/null'
done

# GPTQ: a zero-point word, and every declared field, in both files
fresh int4; $edit "$tmp/t/model.safetensors" xor-word backbone.layers.0.mixer.in_proj.qzeros 3 0x1
expect "qzeros word changed" "backbone.layers.0.mixer.in_proj.qzeros[0, 3] is 0x77777776, but sym is true"
for f in quantize_config.json config.json; do
  p=""; [ $f = config.json ] && p="quantization_config/"
  fresh int4; jset "$tmp/t/$f" "${p}bits" 8
  expect "$f bits edited" "$([ $f = config.json ] && echo 'quantization_config.bits disagrees' || echo 'but bits is 8')"
  fresh int4; jset "$tmp/t/$f" "${p}group_size" 128
  expect "$f group_size edited" "$([ $f = config.json ] && echo 'quantization_config.group_size disagrees' || echo 'but group_size says 128')"
  fresh int4; jset "$tmp/t/$f" "${p}sym" false
  expect "$f sym edited" "$([ $f = config.json ] && echo 'quantization_config.sym disagrees' || echo 'sym is false, but every stored zero point is 8')"
  fresh int4; jset "$tmp/t/$f" "${p}desc_act" true
  expect "$f desc_act edited" "$([ $f = config.json ] && echo 'quantization_config.desc_act disagrees' || echo 'desc_act is true')"
  fresh int4; jset "$tmp/t/$f" "${p}checkpoint_format" '"gptq_v2"'
  expect "$f checkpoint_format edited" "$([ $f = config.json ] && echo 'quantization_config.checkpoint_format disagrees' || echo 'checkpoint_format is "gptq_v2"')"
done
rule='{"+:.*\\.layers\\.0\\.mixer\\.in_proj$": {"group_size": 32}}'
fresh int4; jset "$tmp/t/quantize_config.json" dynamic "$rule"; jset "$tmp/t/config.json" quantization_config/dynamic "$rule"
expect "a dynamic group size the scales do not have" 'in_proj: scales has 4 rows for 256 inputs (group size 64), but dynamic rule'
rule='{"-:.*\\.layers\\.0\\.mixer\\.in_proj$": {}}'
fresh int4; jset "$tmp/t/quantize_config.json" dynamic "$rule"; jset "$tmp/t/config.json" quantization_config/dynamic "$rule"
expect "a dynamic skip of a quantized module" 'in_proj is GPTQ, but dynamic rule "-:'

# GPTQ with kept Linears: vLLM builds a GPTQ layer for every Linear that no
# "-:" dynamic rule skips, so each kept one needs its rule (q/k/v: the fused name)
"$bin" quantize "$model" "$tmp/kept" --recipe int4 --exclude backbone.layers.0.mixer.in_proj \
  --exclude 'backbone.layers.3.mixer.[qkv]_proj' >/dev/null
check "kept Linears get dynamic skip rules" 'grep -qF "3\\\\.mixer\\\\.(qkv|q|k|v)_proj\$" "$tmp/kept/quantize_config.json" && grep -qF "0\\\\.mixer\\\\.in_proj\$" "$tmp/kept/quantize_config.json" && "$bin" verify "$tmp/kept" --against "$model" >/dev/null'
fresh kept; jset "$tmp/t/quantize_config.json" dynamic '{}'; jset "$tmp/t/config.json" quantization_config/dynamic '{}'
expect "a kept Linear without a skip rule" 'is stored unquantized, but no dynamic "-:" rule skips it (4 such module(s))'

# ModelOpt: group_size, exclude entries that cover quantized modules, the two files disagreeing
fresh nvfp4-conservative; jset "$tmp/t/hf_quant_config.json" quantization/group_size 32
expect "NVFP4 group_size edited" "weight_scale has one scale per 16 weights, but group_size says 32"
for entry in 'backbone.layers.1*' 'experts.3.' 'backbone.layers.*.mixer.in_proj'; do
  fresh nvfp4-conservative; jset "$tmp/t/hf_quant_config.json" quantization/exclude_modules "+\"$entry\""
  expect "exclude entry '$entry' covering quantized modules" "exclude_modules entry \"$entry\" covers"
done
fresh nvfp4-conservative; jset "$tmp/t/config.json" quantization_config/quant_algo '"FP8"'
expect "config.json quant_algo disagrees" "quantization_config.quant_algo disagrees with hf_quant_config.json"
fresh nvfp4-conservative; jset "$tmp/t/config.json" quantization_config/kv_cache_scheme '{"dynamic": false, "num_bits": 8, "type": "float"}'
expect "config.json kv_cache_scheme disagrees" "kv_cache_scheme is set but hf_quant_config.json's kv_cache_quant_algo is null"
fresh nvfp4-conservative; jset "$tmp/t/config.json" quantization_config/ignore/0 DELETE
expect "config.json exclude list disagrees" "ignore and hf_quant_config.json's exclude_modules differ"
# the flat form current ModelOpt writes into config.json is compared too
fresh nvfp4-conservative; python3 - "$tmp/t/config.json" "$tmp/t/hf_quant_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); q = json.load(open(sys.argv[2]))["quantization"]
c["quantization_config"] = {"quant_method": "modelopt", "quant_algo": q["quant_algo"],
    "kv_cache_scheme": None, "ignore": q["exclude_modules"][1:],
    "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "float", "group_size": 16}}}}
json.dump(c, open(sys.argv[1], "w"))
PY
expect "flat config.json ignore list disagrees" "quantization_config.ignore and hf_quant_config.json's exclude_modules differ"
fresh mixed; jset "$tmp/t/hf_quant_config.json" quantization/quantized_layers/backbone.layers.0.mixer.in_proj/quant_algo '"NVFP4"'
expect "MIXED_PRECISION layer format edited" "quantized_layers says backbone.layers.0.mixer.in_proj is NVFP4, but it is stored fp8"

# --against a source with other weights (two experts swapped) fails past each format's bound
mkdir "$tmp/swapped"; cp "$model"/* "$tmp/swapped/"
a=backbone.layers.1.mixer.experts.0.up_proj.weight; b=backbone.layers.1.mixer.experts.1.up_proj.weight
$edit "$tmp/swapped/model.safetensors" rename $a tmp; $edit "$tmp/swapped/model.safetensors" rename $b $a
$edit "$tmp/swapped/model.safetensors" rename tmp $b
for r in int4 nvfp4-conservative fp8-conservative; do
  bound=$([ $r = fp8-conservative ] && echo 0.125 || echo 0.500)
  out=$("$bin" verify "$tmp/$r" --against "$tmp/swapped" 2>&1); rc=$?
  check "$r --against other weights fails ($(printf '%s' "$out" | grep problem | head -1))" \
    '[ $rc -eq 1 ] && [[ "$out" == *"experts.0.up_proj: relative error 1.4"*"bound $bound"* ]]'
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
