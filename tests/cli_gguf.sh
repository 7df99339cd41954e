#!/usr/bin/env bash
# GGUF commands end to end: quantize --format gguf, convert, inspect FILE.gguf,
# and the refusals (each one line naming the file and the problem, non-zero
# exit, nothing left at OUT).  Byte equality with llama.cpp's converter is
# tests/test_gguf.c's job; llama.cpp itself runs in scripts/interop.sh.
set -u
bin=$1; src=$2
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d); holder=; trap '[ -n "$holder" ] && kill $holder 2>/dev/null; rm -rf "$tmp"' EXIT

out=$("$bin" quantize "$model" "$tmp/a.gguf" --format gguf --recipe gguf-nvfp4 --threads 1); rc=$?
check "quantize --format gguf exit" '[ $rc -eq 0 ]'
check "summary" '[[ "$out" == *"103 tensors (10 nvfp4, 30 q8_0, 0 bf16/f16, 63 f32)"* ]] && [[ "$out" == *"experts quantized to NVFP4: 160 matrices"* ]]'
"$bin" quantize "$model" "$tmp/b.gguf" --format gguf --recipe gguf-nvfp4 --threads 2 >/dev/null
check "same bytes with 1 and 2 threads" 'cmp -s "$tmp/a.gguf" "$tmp/b.gguf"'
"$bin" quantize "$model" "$tmp/c.gguf" --format gguf --recipe gguf-nvfp4 --gguf-rest bf16 --weight-scale mse >/dev/null; rc=$?
check "bf16 rest + mse" '[ $rc -eq 0 ]'

ins=$("$bin" inspect "$tmp/a.gguf"); rc=$?
check "inspect exit" '[ $rc -eq 0 ]'
check "inspect architecture" '[[ "$ins" == *"architecture nemotron_h_moe"* ]]'
check "inspect pre-tokenizer" '[[ "$ins" == *"tokenizer.ggml.pre"*"\"llama-bpe\""* ]]'
check "inspect expert tensor" '[[ "$ins" =~ blk\.1\.ffn_up_exps\.weight\ +nvfp4\ +256,\ 192,\ 16\ +442368\ +4\.500 ]]'
check "inspect ssm_a F32 [1, 8]" '[[ "$ins" =~ blk\.0\.ssm_a\ +f32\ +1,\ 8\  ]]'
check "inspect by type" '[[ "$ins" =~ nvfp4\ +10\ tensors ]]'
# inspect --json: gguf-py's reading of its own file (every value type,
# tests/gen/gen_gguf_inspect_reference.py), key by key
"$bin" inspect "$src/tests/fixtures/gguf/gguf_py.gguf" --json > "$tmp/ref.json"; rc=$?
out=$(python3 - "$tmp/ref.json" "$src/tests/fixtures/gguf/gguf_py.inspect.json" 2>&1 <<'EOF'
import json, sys
d, ref = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
for k, v in ref.items():
    if k == "tensor_list":
        got = [{f: t[f] for f in v[0]} for t in d[k]]
        assert got == v, "tensor_list: %s != %s" % (got, v)
    elif k == "metadata":
        assert list(d[k]) == list(v), "metadata keys or their order"
        for key in v:
            assert d[k][key] == v[key], "%s: %s != %s" % (key, d[k][key], v[key])
    else:
        assert d[k] == v, "%s: %s != %s" % (k, d[k], v)
print("same")
EOF
)
check "inspect --json as gguf-py reads it ($out)" '[ $rc -eq 0 ] && [ "$out" = same ]'
"$bin" inspect "$tmp/a.gguf" --json > "$tmp/a.json"; rc=$?
check "inspect --json exit" '[ $rc -eq 0 ]'
check "inspect --json: types and a tensor" 'python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
assert d[\"format\"] == \"gguf\" and d[\"architecture\"] == \"nemotron_h_moe\"
assert d[\"types\"][\"nvfp4\"] == {\"tensors\": 10, \"elements\": 7864320, \"bytes\": 4423680, \"bits_per_weight\": 4.5}
t = [t for t in d[\"tensor_list\"] if t[\"name\"] == \"blk.1.ffn_up_exps.weight\"][0]
assert t[\"type\"] == \"nvfp4\" and t[\"shape\"] == [256, 192, 16] and t[\"bytes\"] == 442368
" "$tmp/a.json"'
ins=$("$bin" inspect "$tmp/c.gguf")
check "bf16 rest: token_embd bf16" '[[ "$ins" =~ token_embd\.weight\ +bf16 ]]'

# convert an NVFP4 safetensors checkpoint (calibrated, so with input scales)
"$bin" quantize "$model" "$tmp/nv" --recipe nvfp4-conservative --calib "$src/tests/fixtures/calib.txt" \
  --calib-samples 2 --calib-len 32 --kv-cache none >/dev/null 2>&1; rc=$?
check "nvfp4 checkpoint for convert" '[ $rc -eq 0 ]'
out=$("$bin" convert "$tmp/nv" "$tmp/nv.gguf"); rc=$?
check "convert exit" '[ $rc -eq 0 ] && [[ "$out" == *"NVFP4 matrices repacked from the input"* ]]'
ins=$("$bin" inspect "$tmp/nv.gguf")
check "W4A4: input scales, no prec_a4 tags" '[[ "$ins" == *"blk.1.ffn_up_exps.input_scale"* ]] && [[ "$ins" != *"prec_a4"* ]]'
check "in_proj NVFP4 with scale" '[[ "$ins" =~ blk\.0\.ssm_in\.weight\ +nvfp4 ]] && [[ "$ins" == *"blk.0.ssm_in.scale"* ]]'

# calibrated: the experts go through the safetensors pipeline in a staging
# directory beside OUT, which is removed
out=$("$bin" quantize "$model" "$tmp/cal.gguf" --format gguf --recipe gguf-nvfp4 --calib "$src/tests/fixtures/calib.txt" \
  --calib-samples 2 --calib-len 32 --algo gptq 2>/dev/null); rc=$?
check "calibrated gguf exit" '[ $rc -eq 0 ] && [[ "$out" == *"(GPTQ)"* ]]'
ins=$("$bin" inspect "$tmp/cal.gguf")
check "calibrated: expert input scales, rest q8_0" '[[ "$ins" == *"blk.1.ffn_down_exps.input_scale"* ]] && [[ "$ins" =~ blk\.0\.ssm_in\.weight\ +q8_0 ]]'
check "staging directory removed" '[ -z "$(ls -A "$tmp" | grep nemoq-tmp)" ]'

# temporaries of killed runs: the calibration staging directory of a run
# killed with -9 and a GGUF temporary file (what a killed writer leaves:
# unlocked) are reported, and removed with --clean-stale; a live run's
# temporary (its lock held) is left alone
"$bin" quantize "$model" "$tmp/k.gguf" --format gguf --recipe gguf-nvfp4 --calib "$src/tests/fixtures/calib.txt" \
  --calib-samples 64 --calib-len 256 --algo gptq >/dev/null 2>&1 & pid=$!
for _ in $(seq 300); do ls -A "$tmp" | grep -q '^\.k\.gguf\.nemoq-tmp-' && break; sleep 0.1; done
kill -9 $pid; wait $pid 2>/dev/null
stage=$(ls -A "$tmp" | grep '^\.k\.gguf\.nemoq-tmp-')
check "killed calibrated run leaves its staging directory ($stage)" '[ -n "$stage" ] && [ -d "$tmp/$stage" ]'
head -c 3000000 "$model/model.safetensors" > "$tmp/.k.gguf.nemoq-tmp-Dead01"
touch "$tmp/.k.gguf.nemoq-tmp-Live01"
# the lock on fd 9 is held by the sleep itself, so killing it releases it
( exec 9<"$tmp/.k.gguf.nemoq-tmp-Live01"; flock 9; exec sleep 600 ) & holder=$!
for _ in $(seq 100); do flock -n "$tmp/.k.gguf.nemoq-tmp-Live01" true || break; sleep 0.1; done
err=$("$bin" convert "$model" "$tmp/k.gguf" 2>&1 >/dev/null); rc=$?
check "stale GGUF temporaries reported ($err)" '[ $rc -eq 0 ] && [[ "$err" == *"note: $tmp/.k.gguf.nemoq-tmp-Dead01 (3.0 MB) was left by a nemoq run that was killed; --clean-stale removes it"* ]] && [[ "$err" == *"note: $tmp/$stage ("* ]] && [[ "$err" != *Live01* ]] && [ -e "$tmp/.k.gguf.nemoq-tmp-Dead01" ]'
err=$("$bin" convert "$model" "$tmp/k.gguf" --force --clean-stale 2>&1 >/dev/null); rc=$?
check "--clean-stale removes them, not the live one ($err)" '[ $rc -eq 0 ] && [[ "$err" == *"removed stale temporary file $tmp/.k.gguf.nemoq-tmp-Dead01"* ]] && [[ "$err" == *"removed stale temporary directory $tmp/$stage"* ]] && [ ! -e "$tmp/.k.gguf.nemoq-tmp-Dead01" ] && [ ! -e "$tmp/$stage" ] && [ -e "$tmp/.k.gguf.nemoq-tmp-Live01" ]'
kill $holder; wait $holder 2>/dev/null; holder=
err=$("$bin" quantize "$model" "$tmp/k.gguf" --format gguf --recipe gguf-nvfp4 --force --clean-stale 2>&1 >/dev/null); rc=$?
check "quantize --format gguf --clean-stale ($err)" '[ $rc -eq 0 ] && [[ "$err" == *"removed stale temporary file $tmp/.k.gguf.nemoq-tmp-Live01"* ]] && [ -z "$(ls -A "$tmp" | grep nemoq-tmp)" ]'

# refusals
err=$("$bin" convert "$model" "$tmp/a.gguf" 2>&1); rc=$?
check "existing OUT refused" '[ $rc -eq 1 ] && [[ "$err" == *"a.gguf: already exists"* ]]'
"$bin" quantize "$model" "$tmp/fp8" --recipe fp8-conservative --weights-only >/dev/null 2>&1
err=$("$bin" convert "$tmp/fp8" "$tmp/fp8.gguf" 2>&1); rc=$?
check "FP8 checkpoint refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"stored as FP8"* ]] && [ ! -e "$tmp/fp8.gguf" ]'
mkdir "$tmp/badtok"; cp "$model"/config.json "$model"/model.safetensors "$tmp/badtok/"
python3 - "$model/tokenizer.json" "$tmp/badtok/tokenizer.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+|\\s+"
json.dump(t, open(sys.argv[2], "w"))
EOF
err=$("$bin" convert "$tmp/badtok" "$tmp/bt.gguf" 2>&1); rc=$?
check "unknown pre-tokenizer refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"tokenizer.json: the pre-tokenizer regex matches none that llama.cpp knows"* ]]'
check "nothing left behind" '[ -z "$(ls -A "$tmp" | grep -E "bt.gguf|nemoq-tmp")" ]'
rm "$tmp/badtok/tokenizer.json"
err=$("$bin" convert "$tmp/badtok" "$tmp/bt.gguf" 2>&1); rc=$?
check "missing tokenizer refused" '[ $rc -eq 1 ] && [[ "$err" == *"tokenizer.json: missing"* ]]'
err=$("$bin" quantize "$model" "$tmp/x.gguf" --format gguf --recipe nvfp4-conservative 2>&1); rc=$?
check "other recipe is a usage error" '[ $rc -eq 2 ] && [[ "$err" == *"--recipe must be gguf-nvfp4"* ]]'
err=$("$bin" quantize "$model" "$tmp/x.gguf" --format gguf --recipe gguf-nvfp4 --gguf-rest q4 2>&1); rc=$?
check "bad --gguf-rest" '[ $rc -eq 2 ] && [[ "$err" == *"--gguf-rest"*"q4"*"expected q8_0"* ]]'
printf 'GGUF\003\000\000\000' > "$tmp/trunc.gguf"
err=$("$bin" inspect "$tmp/trunc.gguf" 2>&1); rc=$?
check "truncated GGUF named" '[ $rc -eq 1 ] && [[ "$err" == *"trunc.gguf: truncated"* ]]'
err=$("$bin" convert "$model" "$model/out.gguf" 2>&1); rc=$?
check "output inside the input refused" '[ $rc -eq 1 ] && [ ! -e "$model/out.gguf" ]'

echo "cli_gguf: $pass passed, $fail failed"
[ $fail -eq 0 ]
