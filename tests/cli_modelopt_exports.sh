#!/usr/bin/env bash
# verify and inspect on checkpoints shaped like ModelOpt 0.47's own NemotronH
# exports: prefix-wildcard exclude entries ("name*", "name.*"), the flat
# config.json quantization_config, and the exclude entries ModelOpt 0.47
# corrupts ("lm_head.\u0000backbone.pt_name_sentinel", see
# src/export/metadata.h). Built from a nemoq weights-only NVFP4 export whose
# metadata is rewritten the way ModelOpt writes it.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }

"$bin" quantize "$model" "$tmp/base" --recipe nvfp4-conservative --weights-only >/dev/null 2>&1
check "base export" '[ -f "$tmp/base/model.safetensors" ]'

# make_export DIR EXCLUDE-JSON [flat-only]: rewrites hf_quant_config.json and
# config.json as ModelOpt 0.47 writes them (convert_hf_config.py)
make_export() {
  rm -rf "$1"; cp -r "$tmp/base" "$1"
  python3 - "$1" "$2" "${3:-}" <<'PY'
import json, sys
d, ex, flat_only = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
hf = json.load(open(d + "/hf_quant_config.json"))
hf["producer"] = {"name": "modelopt", "version": "0.47.0"}
hf["quantization"].pop("exclude_modules"); hf["quantization"]["exclude_modules"] = ex
hf.pop("nemoq", None)
c = json.load(open(d + "/config.json"))
q = hf["quantization"]
c["quantization_config"] = {
    "config_groups": {"group_0": {"weights": {"dynamic": False, "num_bits": 4, "type": "float",
                                              "group_size": 16}, "targets": ["Linear"]}},
    "ignore": ex, "quant_algo": q["quant_algo"], "producer": hf["producer"], "quant_method": "modelopt"}
json.dump(c, open(d + "/config.json", "w"), indent=2)
if flat_only:
    import os; os.remove(d + "/hf_quant_config.json")
else:
    json.dump(hf, open(d + "/hf_quant_config.json", "w"), indent=4)
PY
}
# what ModelOpt's _prefix_wildcard_summarize_exclude_modules makes of the
# tiny model's kept modules (layers 2, 3 whole; conv1d of 0, 5, 7, 10; 7, 8
# kept Linears), with the lm_head entry corrupted as 0.47 writes it
wild='["backbone.layers.0.mixer.conv1d", "backbone.layers.10.mixer.conv1d", "backbone.layers.2*", "backbone.layers.3*", "backbone.layers.5.mixer.conv1d", "backbone.layers.7.mixer.conv1d", "backbone.layers.7.mixer.in_proj", "backbone.layers.7.mixer.out_proj", "backbone.layers.8.mixer.*_proj", "lm_head.\u0000backbone.pt_name_sentinel"]'
make_export "$tmp/mo" "$wild"
out=$("$bin" verify "$tmp/mo" 2>&1); rc=$?
check "verify accepts ModelOpt wildcards and warns of the corrupted entry ($out)" '[ $rc -eq 0 ] && [[ "$out" == *"warning: exclude entry \"lm_head.\u0000backbone.pt_name_sentinel\" is corrupted (a ModelOpt 0.47 bug"* ]] && [[ "$out" == *"does not exclude lm_head"* ]] && [[ "$out" == *"ok: consistent"* ]]'
out=$("$bin" inspect "$tmp/mo" 2>&1); rc=$?
check "inspect reads it and names the corrupted entry ($out)" '[ $rc -eq 0 ] && [[ "$out" == *"quant_algo W4A16_NVFP4"* ]] && [[ "$out" == *"exclude entry for lm_head is corrupted by a ModelOpt 0.47 bug"* ]]'
out=$("$bin" inspect "$tmp/mo" --json 2>&1)
check "inspect --json counts wildcards and corrupted entries" '[[ "$out" == *"\"exclude_wildcards\": 3"* ]] && [[ "$out" == *"\"exclude_corrupted\": ["* ]]'

# only config.json's flat form (hf_quant_config.json removed)
make_export "$tmp/flat" "$wild" flat
out=$("$bin" verify "$tmp/flat" 2>&1); rc=$?
check "verify reads the flat config.json form alone ($out)" '[ $rc -eq 0 ] && [[ "$out" == *"ok: consistent"* ]]'
out=$("$bin" inspect "$tmp/flat" 2>&1); rc=$?
check "inspect reads the flat config.json form alone" '[ $rc -eq 0 ] && [[ "$out" == *"yes: modelopt, quant_algo W4A16_NVFP4"* ]]'

# ModelOpt's pair form for layer 1 ("backbone.layers.1" + ".*"): vLLM's
# substring rule also excludes the quantized layers 10 and 11
pair='["backbone.layers.0.mixer.conv1d", "backbone.layers.1", "backbone.layers.1.*", "backbone.layers.10.mixer.conv1d", "backbone.layers.2*", "backbone.layers.3*", "backbone.layers.5.mixer.conv1d", "backbone.layers.7.mixer.conv1d", "backbone.layers.7.mixer.in_proj", "backbone.layers.7.mixer.out_proj", "backbone.layers.8.mixer.*_proj", "lm_head"]'
make_export "$tmp/pair" "$pair"
out=$("$bin" verify "$tmp/pair" 2>&1); rc=$?
check "verify: substring hazard of a pair entry ($out)" '[ $rc -eq 1 ] && [[ "$out" == *"exclude_modules entry \"backbone.layers.1\" covers"* ]]'

# a corrupted entry that was the only exclusion of kept Linears changes
# what loads: a problem, not a warning
bad='["backbone.layers.0.mixer.conv1d", "backbone.layers.10.mixer.conv1d", "backbone.layers.2.\u0000backbone.pt_name_sentinel*", "backbone.layers.3*", "backbone.layers.5.mixer.conv1d", "backbone.layers.7.mixer.conv1d", "backbone.layers.7.mixer.in_proj", "backbone.layers.7.mixer.out_proj", "backbone.layers.8.mixer.*_proj", "lm_head"]'
make_export "$tmp/bad" "$bad"
out=$("$bin" verify "$tmp/bad" 2>&1); rc=$?
check "verify: corrupted entry hides kept Linears ($out)" '[ $rc -eq 1 ] && [[ "$out" == *"backbone.layers.2.mixer.in_proj is stored unquantized and excluded only by a corrupted entry (ModelOpt bug)"* ]]'
# a wildcard that matches nothing is a problem
none='["backbone.layers.0.mixer.conv1d", "backbone.layers.10.mixer.conv1d", "backbone.layers.2*", "backbone.layers.3*", "backbone.layers.5.mixer.conv1d", "backbone.layers.7.mixer.conv1d", "backbone.layers.7.mixer.in_proj", "backbone.layers.7.mixer.out_proj", "backbone.layers.8.mixer.*_proj", "lm_head", "mtp.*"]'
make_export "$tmp/none" "$none"
out=$("$bin" verify "$tmp/none" 2>&1); rc=$?
check "verify: wildcard matching nothing ($out)" '[ $rc -eq 1 ] && [[ "$out" == *"exclude_modules entry mtp.* matches no module"* ]]'

# MIXED_PRECISION as ModelOpt 0.47's auto_quantize exports NemotronH: one
# quantized_layers entry per FusedMoE ("...mixer.experts") for all its
# experts (vLLM's lookup finds the layer by that name), and, as written, every
# key corrupted with the name sentinel; jansson refuses a NUL in an object
# key, so verify says what the file is instead of reading it
mixed() { # mixed DIR corrupt|clean
  rm -rf "$1"; cp -r "$tmp/base" "$1"
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
d, mode = sys.argv[1], sys.argv[2]
with open(d + "/model.safetensors", "rb") as f:
    names = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
mods = sorted({k[:-len(".weight_scale")] for k in names if k.endswith(".weight_scale")})
sfx = ".\u0000backbone.pt_name_sentinel" if mode == "corrupt" else ""
layers = {}
for m in mods:
    key = m.split(".experts.")[0] + ".experts" if ".experts." in m else m
    layers[key + sfx] = {"quant_algo": "NVFP4", "group_size": 16}
hf = {"producer": {"name": "modelopt", "version": "0.47.0"},
      "quantization": {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": None,
                       "quantized_layers": layers}}
json.dump(hf, open(d + "/hf_quant_config.json", "w"), indent=4)
c = json.load(open(d + "/config.json"))
c["quantization_config"] = dict(hf["quantization"], quant_method="modelopt")
json.dump(c, open(d + "/config.json", "w"), indent=2)
PY
}
mixed "$tmp/mixed" clean
out=$("$bin" verify "$tmp/mixed" 2>&1); rc=$?
check "verify: one quantized_layers entry covers a FusedMoE's experts ($out)" '[ $rc -eq 0 ] && [[ "$out" == *"ok: consistent"* ]]'
mixed "$tmp/mixed-nul" corrupt
out=$("$bin" verify "$tmp/mixed-nul" 2>&1); rc=$?
check "verify: NUL-corrupted quantized_layers keys named as ModelOpt's bug ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"hf_quant_config.json: not valid JSON: NUL byte in object key not supported"*"a ModelOpt 0.47 export of NemotronH"* ]]'
out=$("$bin" eval "$tmp/mixed-nul" --text "$src/tests/fixtures/calib.txt" --windows 1 2>&1); rc=$?
check "eval: the same, one line ($out)" '[ $rc -ne 0 ] && [ "$(printf "%s\n" "$out" | wc -l)" -eq 1 ] && [[ "$out" == *"remove that suffix to read it"* ]]'

echo "cli_modelopt_exports: $pass passed, $fail failed"
[ $fail -eq 0 ]
