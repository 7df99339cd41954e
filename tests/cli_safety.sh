#!/usr/bin/env bash
# nemoq never loses data: nothing it writes lands in or replaces the input
# (checked by device and inode: symlink and bind-mount aliases too), the
# commit is atomic with respect to OUT (a directory that appears during the
# run is never replaced; two racing runs: one wins, one fails), --force swaps
# atomically (kill -9 at any moment leaves the old or the new output at OUT),
# stale temporaries of killed runs are reported and removed only when no live
# run holds them, every path is checked before any work, the umask is
# honoured.  Races are made deterministic with the writer's test hook
# NEMOQ_TEST_PAUSE_BEFORE_COMMIT (src/io/outdir.c); NEMOQ_TEST_NO_RENAMEAT2=1
# exercises the fallbacks for file systems without renameat2 flags.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d)
# every mount under $tmp, deepest first (a renamed directory takes its mounts along)
unmount_all() { findmnt -rn -o TARGET | grep "^$tmp/" | sort -r | while read -r m; do umount "$m"; done; }
cleanup() { unmount_all; rm -rf "$tmp"; }
trap cleanup EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
in="$tmp/in"; cp -r "$model" "$in"
pristine="$tmp/pristine"; cp -r "$model" "$pristine"
intact() { diff -r "$in" "$pristine" >/dev/null && [ -z "$(ls -A "$tmp" | grep nemoq-tmp)" ]; }
no_tmp() { [ -z "$(ls -A "$1" | grep nemoq-tmp)" ]; }
q() { "$bin" quantize "$in" "$@" --recipe int4 2>&1; }
# waits for a paused run to reach the commit (the hook creates STEM.reached)
reach() { for _ in $(seq 500); do [ -e "$1.reached" ] && return 0; sleep 0.02; done; return 1; }

# --- item 1: --report (or OUT) inside the input, also through aliases --------
err=$(q "$tmp/o" --report "$in/tokenizer"); rc=$?
check "--report IN/tokenizer refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"--report $in/tokenizer.json: would be written inside the input directory"* ]] && intact && [ ! -e "$tmp/o" ]'
err=$(q "$tmp/o" --report "$in/config"); rc=$?
check "--report IN/config refused" '[ $rc -eq 1 ] && intact && [ ! -e "$tmp/o" ]'
ln -s "$in" "$tmp/alias"
err=$(q "$tmp/o" --report "$tmp/alias/tokenizer"); rc=$?
check "--report through a symlink alias refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"inside the input directory"* ]] && intact'
err=$(q "$tmp/alias/sub"); rc=$?
check "OUT inside IN through a symlink alias refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"inside the input directory"* ]] && intact && [ ! -e "$in/sub" ]'
err=$(q "$tmp/alias" --force); rc=$?
check "OUT = symlink alias of IN refused with --force ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"input directory"* ]] && intact'
ln -s "$tmp" "$tmp/up"
err=$("$bin" quantize "$tmp/up/in" "$tmp" --recipe int4 --force 2>&1); rc=$?
check "OUT containing IN (IN named through an alias) refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"contain the input"* ]] && intact'

mkdir -p "$tmp/bind" "$tmp/bindup"
if mount --bind "$in" "$tmp/bind" 2>"$tmp/mnterr"; then
  err=$(q "$tmp/bind" --force); rc=$?
  check "OUT = bind mount of IN refused with --force ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"is the input directory"* ]] && intact'
  err=$(q "$tmp/bind/sub"); rc=$?
  check "OUT inside a bind mount of IN refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"inside the input directory"* ]] && intact'
  err=$(q "$tmp/o" --report "$tmp/bind/tokenizer"); rc=$?
  check "--report through a bind mount of IN refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"inside the input directory"* ]] && intact'
  mount --bind "$tmp" "$tmp/bindup"
  err=$("$bin" quantize "$in" "$tmp/bindup" --recipe int4 --force 2>&1); rc=$?
  check "OUT = bind mount of IN's parent refused with --force ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"contain the input"* ]] && intact'
  # an old output holding a bind mount of IN: --force must not empty it
  "$bin" quantize "$in" "$tmp/old" --recipe int4 >/dev/null 2>&1
  mkdir "$tmp/old/mnt" && mount --bind "$in" "$tmp/old/mnt"
  err=$(q "$tmp/old" --force); rc=$?
  check "--force never deletes through a bind mount inside the old output ($err)" 'diff -r "$in" "$pristine" >/dev/null'
  unmount_all; rm -rf "$tmp"/.old.nemoq-tmp-* "$tmp/old"
else
  echo "SKIP: bind-mount cases (mount --bind failed: $(head -1 "$tmp/mnterr")); symlink aliases tested above"
fi

# --- item 2: a directory that appears at OUT during the run ------------------
for fallback in 0 1; do
  rm -f "$tmp"/p.*
  NEMOQ_TEST_NO_RENAMEAT2=$fallback NEMOQ_TEST_PAUSE_BEFORE_COMMIT="$tmp/p" \
    "$bin" quantize "$in" "$tmp/new" --recipe int4 >"$tmp/out" 2>&1 & pid=$!
  reach "$tmp/p"; mkdir "$tmp/new"; echo precious >"$tmp/new/precious.txt"; touch "$tmp/p.go"
  wait $pid; rc=$?
  check "OUT created during the run is kept (fallback=$fallback: $(cat "$tmp/out"))" '[ $rc -eq 1 ] && [[ "$(cat "$tmp/out")" == *"it was created during the run"*"left untouched"* ]] && [ "$(cat "$tmp/new/precious.txt")" = precious ] && [ "$(ls -A "$tmp/new")" = precious.txt ] && no_tmp "$tmp"'
  rm -rf "$tmp/new"
  # an empty OUT at start-up is allowed, but not once files appear in it
  mkdir "$tmp/empty"; rm -f "$tmp"/p.*
  NEMOQ_TEST_NO_RENAMEAT2=$fallback NEMOQ_TEST_PAUSE_BEFORE_COMMIT="$tmp/p" \
    "$bin" quantize "$in" "$tmp/empty" --recipe int4 >"$tmp/out" 2>&1 & pid=$!
  reach "$tmp/p"; echo precious >"$tmp/empty/precious.txt"; touch "$tmp/p.go"
  wait $pid; rc=$?
  check "files appearing in an empty OUT are kept (fallback=$fallback)" '[ $rc -eq 1 ] && [[ "$(cat "$tmp/out")" == *"files appeared in it during the run"* ]] && [ "$(ls -A "$tmp/empty")" = precious.txt ] && no_tmp "$tmp"'
  rm -rf "$tmp/empty"
  # two runs racing to the same new OUT: exactly one wins
  rm -f "$tmp"/p.* "$tmp"/r.*
  NEMOQ_TEST_NO_RENAMEAT2=$fallback NEMOQ_TEST_PAUSE_BEFORE_COMMIT="$tmp/p" \
    "$bin" quantize "$in" "$tmp/race" --recipe int4 >"$tmp/out1" 2>&1 & p1=$!
  NEMOQ_TEST_NO_RENAMEAT2=$fallback NEMOQ_TEST_PAUSE_BEFORE_COMMIT="$tmp/r" \
    "$bin" quantize "$in" "$tmp/race" --recipe fp8-conservative --weights-only >"$tmp/out2" 2>&1 & p2=$!
  reach "$tmp/p"; reach "$tmp/r"; touch "$tmp/p.go" "$tmp/r.go"
  wait $p1; r1=$?; wait $p2; r2=$?
  check "racing runs: one wins, one fails clearly (fallback=$fallback: $r1 $r2)" '[ $((r1 + r2)) -eq 1 ] && grep -q "created during the run" "$tmp/out1" "$tmp/out2" && "$bin" verify "$tmp/race" >/dev/null && no_tmp "$tmp"'
  rm -rf "$tmp/race"
done

# --- item 4: --force swaps atomically; kill -9 leaves old or new at OUT ------
"$bin" quantize "$in" "$tmp/f" --recipe fp8-conservative --weights-only >/dev/null 2>&1
rm -f "$tmp"/p.*
NEMOQ_TEST_PAUSE_BEFORE_COMMIT="$tmp/p" "$bin" quantize "$in" "$tmp/f" --recipe int4 --force >/dev/null 2>&1 & pid=$!
reach "$tmp/p"; kill -9 $pid; wait $pid 2>/dev/null
check "kill -9 just before the swap: old output intact" '[ -f "$tmp/f/hf_quant_config.json" ] && "$bin" verify "$tmp/f" >/dev/null'
n=$(ls -A "$tmp" | grep -c '^\.f\.nemoq-tmp-')
err=$(q "$tmp/f2"); rc=$?
check "a killed run's temporary is left ($n) and not reported for another OUT" '[ $n -eq 1 ] && [[ "$err" != *"nemoq-tmp"* ]]'
err=$(q "$tmp/f" --force); rc=$?
check "stale temporary reported with its size ($err)" '[ $rc -eq 0 ] && [[ "$err" == *"$tmp/.f.nemoq-tmp-"*" MB) was left by a nemoq run that was killed; --clean-stale removes it"* ]] && [ -f "$tmp/f/quantize_config.json" ]'
err=$(q "$tmp/f" --force --clean-stale); rc=$?
check "--clean-stale removes it ($err)" '[ $rc -eq 0 ] && [[ "$err" == *"removed stale temporary directory $tmp/.f.nemoq-tmp-"* ]] && no_tmp "$tmp"'
# a live run's temporary is never removed
rm -f "$tmp"/p.*
NEMOQ_TEST_PAUSE_BEFORE_COMMIT="$tmp/p" "$bin" quantize "$in" "$tmp/f" --recipe fp8-conservative --weights-only --force >"$tmp/out" 2>&1 & pid=$!
reach "$tmp/p"
err=$(q "$tmp/f" --force --clean-stale); rc=$?
live=$(ls -A "$tmp" | grep -c '^\.f\.nemoq-tmp-')
touch "$tmp/p.go"; wait $pid; rl=$?
check "--clean-stale leaves a live run's temporary alone ($err)" '[ $rc -eq 0 ] && [ $live -eq 1 ] && [[ "$err" != *"nemoq-tmp"* ]] && [ $rl -eq 0 ] && [ -f "$tmp/f/hf_quant_config.json" ] && no_tmp "$tmp"'
# kill -9 at many moments of --force runs: OUT always verifies, old or new
bad=0
for i in $(seq 0 11); do
  "$bin" quantize "$in" "$tmp/f" --recipe int4 --force --clean-stale >/dev/null 2>&1 & pid=$!
  sleep "$(printf '0.%03d' $((i * 20)))"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  "$bin" verify "$tmp/f" >/dev/null 2>&1 || bad=$((bad + 1))
done
check "kill -9 during --force: OUT complete every time ($bad bad)" '[ $bad -eq 0 ]'
"$bin" quantize "$in" "$tmp/f" --recipe int4 --force --clean-stale >/dev/null 2>&1
# the fallback without RENAME_EXCHANGE, and its recovery note
err=$(NEMOQ_TEST_NO_RENAMEAT2=1 "$bin" quantize "$in" "$tmp/f" --recipe fp8-conservative --weights-only --force 2>&1); rc=$?
check "--force without RENAME_EXCHANGE (fallback) replaces ($err)" '[ $rc -eq 0 ] && [ -f "$tmp/f/hf_quant_config.json" ] && no_tmp "$tmp"'
mv "$tmp/f" "$tmp/.f.nemoq-tmp-AbC123.old"
err=$(q "$tmp/f" --clean-stale); rc=$?
check "a moved-aside old output is named, never removed ($err)" '[[ "$err" == *".f.nemoq-tmp-AbC123.old ("*"is the previous output"*"rename it to $tmp/f"* ]] && [ -d "$tmp/.f.nemoq-tmp-AbC123.old" ]'
rm -rf "$tmp/.f.nemoq-tmp-AbC123.old" "$tmp/f" "$tmp/f2"

# --- item 9: every path is checked before any work ---------------------------
mkdir "$tmp/isdir.json"
for args in "--report $tmp/nodir/r" "--report $tmp/isdir" "--eval $tmp/missing.txt" "--calib $tmp" \
            "--recipe-file $tmp/missing.json"; do
  err=$("$bin" quantize "$in" "$tmp/v" --recipe int4 $args 2>&1); rc=$?
  check "bad path refused before work: $args ($err)" '[ $rc -ne 0 ] && [ $(printf "%s\n" "$err" | wc -l) -eq 1 ] && [ ! -e "$tmp/v" ] && no_tmp "$tmp"'
done
mkdir "$tmp/ro"; chmod 555 "$tmp/ro"
if [ ! -w "$tmp/ro" ]; then  # root writes anywhere: skipped
  err=$(q "$tmp/v" --report "$tmp/ro/r"); rc=$?
  check "read-only report directory refused before work ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"not writable"* ]] && [ ! -e "$tmp/v" ]'
fi

# --- item 12: the output honours the umask -----------------------------------
(umask 027; "$bin" quantize "$in" "$tmp/u1" --recipe int4 >/dev/null 2>&1)
(umask 002; "$bin" quantize "$in" "$tmp/u2" --recipe int4 --report "$tmp/u2r" >/dev/null 2>&1)
check "umask 027: 750 directory, 640 files" '[ "$(stat -c %a "$tmp/u1")" = 750 ] && [ "$(stat -c %a "$tmp/u1/model.safetensors")" = 640 ] && [ "$(stat -c %a "$tmp/u1/config.json")" = 640 ]'
check "umask 002: 775 directory, 664 files and report" '[ "$(stat -c %a "$tmp/u2")" = 775 ] && [ "$(stat -c %a "$tmp/u2/tokenizer.json")" = 664 ] && [ "$(stat -c %a "$tmp/u2r.json")" = 664 ]'

err=$(q "$tmp/u1" --force --report "$tmp/u1/config"); rc=$?
check "--report inside the output refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"would be written inside the output directory"* ]] && [ "$(stat -c %a "$tmp/u1")" = 750 ]'

check "input never changed" 'diff -r "$in" "$pristine" >/dev/null'
echo "cli_safety: $pass passed, $fail failed"
[ $fail -eq 0 ]
