#!/usr/bin/env bash
# nemoq quantize / verify end to end on the bundled model: every preset
# passes verify --against, output is byte-identical across thread counts, bad
# input and bad flags give one-line errors and leave no output behind.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }

for r in nvfp4-conservative nvfp4-aggressive fp8-conservative fp8-aggressive int4; do
  "$bin" quantize "$model" "$tmp/$r" --recipe "$r" --weights-only >/dev/null 2>"$tmp/err"; rc=$?
  check "$r quantizes ($(cat "$tmp/err"))" '[ $rc -eq 0 ]'
  out=$("$bin" verify "$tmp/$r" --against "$model" 2>&1); rc=$?
  check "$r verifies ($(printf '%s' "$out" | tail -1))" '[ $rc -eq 0 ] && [[ "$out" == *"ok: consistent"* ]]'
done
check "nvfp4 writes hf_quant_config.json" '[ -f "$tmp/nvfp4-conservative/hf_quant_config.json" ]'
check "int4 writes quantize_config.json" '[ -f "$tmp/int4/quantize_config.json" ]'
check "tokenizer copied" 'cmp -s "$model/tokenizer.json" "$tmp/int4/tokenizer.json"'
check "generation_config copied" 'cmp -s "$model/generation_config.json" "$tmp/int4/generation_config.json"'
out=$("$bin" inspect "$tmp/nvfp4-conservative")
check "inspect sees NVFP4" '[[ "$out" == *"quantized   yes: modelopt, quant_algo W4A16_NVFP4"* ]] && [[ "$out" == *"parameters  13,454,840"* ]]'
out=$("$bin" inspect "$tmp/int4")
check "inspect sees GPTQ" '[[ "$out" == *"quantized   yes: gptq"* ]] && [[ "$out" == *"parameters  13,454,840"* ]]'

# determinism across thread counts, with the search-based scales too
for t in 1 2; do
  "$bin" quantize "$model" "$tmp/t$t" --recipe nvfp4-aggressive --weights-only --weight-scale mse --threads $t >/dev/null
  "$bin" quantize "$model" "$tmp/i$t" --recipe int4 --weight-scale mse --threads $t >/dev/null
done
check "nvfp4 identical for 1 and 2 threads" 'diff -r "$tmp/t1" "$tmp/t2" >/dev/null'
check "int4 identical for 1 and 2 threads" 'diff -r "$tmp/i1" "$tmp/i2" >/dev/null'
out=$("$bin" quantize "$model" "$tmp/m" --recipe int4 --weight-scale mse)
check "mse reports its gain" '[[ "$out" == *"less squared error than max scales"* ]]'

# sharding
"$bin" quantize "$model" "$tmp/sh" --recipe fp8-conservative --weights-only --max-shard-size 4MB >/dev/null
n=$(ls "$tmp/sh"/*.safetensors | wc -l)
check "4MB shards ($n)" '[ "$n" -ge 3 ] && [ -f "$tmp/sh/model.safetensors.index.json" ]'
check "sharded output verifies" '"$bin" verify "$tmp/sh" --against "$model" >/dev/null'

# errors: one line, exit code, nothing left behind
err=$("$bin" quantize "$model" "$tmp/x" --recipe nvfp4-conservative 2>&1); rc=$?
check "W4A4 without calibration refused" '[ $rc -eq 1 ] && [[ "$err" == *"--weights-only"* ]] && [ ! -e "$tmp/x" ]'
err=$("$bin" quantize "$model" "$tmp/x" --recipe nvfp5 2>&1); rc=$?
check "unknown recipe" '[ $rc -eq 1 ] && [[ "$err" == *"unknown recipe '"'"'nvfp5'"'"'"* ]]'
err=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --weight-scale median 2>&1); rc=$?
check "bad --weight-scale" '[ $rc -eq 2 ] && [[ "$err" == *"--weight-scale '"'"'median'"'"'"* ]]'
err=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --group-size 100 2>&1); rc=$?
check "bad --group-size" '[ $rc -eq 2 ] && [[ "$err" == *"expected 32, 64 or 128"* ]]'
err=$("$bin" quantize "$model" "$tmp/int4" --recipe int4 2>&1); rc=$?
check "non-empty output refused" '[ $rc -eq 1 ] && [[ "$err" == *"not empty (use --force"* ]]'
err=$("$bin" quantize "$model" "$model" --recipe int4 --force 2>&1); rc=$?
check "input directory refused" '[ $rc -eq 1 ] && [[ "$err" == *"input directory"* ]]'
err=$("$bin" quantize "$tmp/int4" "$tmp/x" --recipe int4 2>&1); rc=$?
check "quantized input refused" '[ $rc -eq 1 ] && [[ "$err" == *"already quantized"* ]]'
err=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --exclude 'backbone.layer.*' 2>&1); rc=$?
check "rule matching nothing" '[ $rc -eq 1 ] && [[ "$err" == *"matches no module"* ]]'

# a NaN weight stops the run naming the tensor; a missing tensor is named too
mkdir -p "$tmp/nan" "$tmp/missing"
cp "$model"/config.json "$tmp/nan/"; cp "$model"/config.json "$tmp/missing/"
python3 - "$model/model.safetensors" "$tmp/nan/model.safetensors" "$tmp/missing/model.safetensors" <<'PY'
import json, struct, sys
src, nan_out, missing_out = sys.argv[1:]
b = open(src, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); data = b[8 + n:]
name = "backbone.layers.4.mixer.experts.7.down_proj.weight"
off = 8 + n + h[name]["data_offsets"][0] + 2 * 100
open(nan_out, "wb").write(b[:off] + b"\xc0\x7f" + b[off + 2:])
gone = "backbone.layers.6.mixer.experts.3.up_proj.weight"
del h[gone]
items = sorted(((k, v) for k, v in h.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
hdr, chunks, pos = {"__metadata__": {"format": "pt"}}, [], 0
for k, v in items:
    s, e = v["data_offsets"]; chunks.append(data[s:e])
    hdr[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [pos, pos + e - s]}; pos += e - s
hb = json.dumps(hdr).encode(); hb += b" " * (-len(hb) % 8)
open(missing_out, "wb").write(struct.pack("<Q", len(hb)) + hb + b"".join(chunks))
PY
err=$("$bin" quantize "$tmp/nan" "$tmp/x" --recipe int4 2>&1); rc=$?
check "NaN weight named ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"backbone.layers.4.mixer.experts.7.down_proj.weight"*"element 100 is NaN"* ]] && [ ! -e "$tmp/x" ] && [ -z "$(ls -A "$tmp" | grep nemoq-tmp)" ]'
err=$("$bin" quantize "$tmp/missing" "$tmp/x" --recipe int4 2>&1); rc=$?
check "missing tensor named" '[ $rc -eq 1 ] && [[ "$err" == *"missing tensor '"'"'backbone.layers.6.mixer.experts.3.up_proj.weight'"'"'"* ]]'

# verify catches a tampered output
cp -r "$tmp/nvfp4-conservative" "$tmp/bad"
python3 - "$tmp/bad/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
off = 8 + n + h["backbone.layers.0.mixer.in_proj.weight_scale_2"]["data_offsets"][0]
b[off:off + 4] = struct.pack("<f", -1.0)
open(p, "wb").write(b)
PY
out=$("$bin" verify "$tmp/bad" 2>&1); rc=$?
check "verify flags a negative global scale" '[ $rc -eq 1 ] && [[ "$out" == *"in_proj.weight_scale_2: scale -1 is not finite and positive"* ]]'
python3 - "$tmp/bad/hf_quant_config.json" <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p))
d["quantization"]["exclude_modules"].remove("backbone.layers.3.mixer.q_proj")
json.dump(d, open(p, "w"))
PY
out=$("$bin" verify "$tmp/bad" 2>&1)
check "verify flags an incomplete exclude list" '[[ "$out" == *"backbone.layers.3.mixer.q_proj is stored unquantized but not listed in exclude_modules"* ]]'

# dry-run of NVIDIA's 52-layer config: the exclusion set, from the pattern alone
out=$("$bin" quantize "$src/tests/fixtures/nemotron-3-nano-30b-a3b.config.json" --recipe nvfp4-conservative --dry-run)
kept=$(printf '%s\n' "$out" | awk '$4 == "bf16" && ($2 == "attention_proj" || $2 == "mamba_proj") {split($1, a, "."); print a[3]}' | sort -n | uniq | tr '\n' ' ')
check "dry-run keeps exactly NVIDIA's layers ($kept)" '[ "$kept" = "4 5 11 12 18 19 25 26 32 33 41 42 " ]'
check "dry-run summary" '[[ "$out" == *"summary: 5968 nvfp4, 0 fp8, 0 int4, 84 kept; kv cache fp8"* ]]'
# the last --algo given wins (an earlier gptq used to stick,
# so this needed --calib and failed)
out=$("$bin" quantize "$model" "$tmp/last-wins" --recipe int4 --algo gptq --algo rtn 2>&1); rc=$?
"$bin" quantize "$model" "$tmp/plain-rtn" --recipe int4 >/dev/null 2>&1
check "a later --algo rtn replaces an earlier gptq ($out)" '[ $rc -eq 0 ] && cmp -s "$tmp/last-wins/model.safetensors" "$tmp/plain-rtn/model.safetensors"'
out=$("$bin" quantize "$model" "$tmp/last-wins2" --recipe int4 --algo rtn --algo gptq 2>&1); rc=$?
check "a later --algo gptq replaces an earlier rtn ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"--algo gptq needs --calib"* ]] && [ ! -e "$tmp/last-wins2" ]'
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
