#!/usr/bin/env bash
# Kill test (issue 5): start `lora-wgpu train` with a checkpoint after every step, SIGKILL it at
# random moments (many of them during a save), resume with --resume, and check every time that
#   - the newest complete checkpoint loads: the resumed run says "resume from step N" with N the
#     step `checkpoints/latest` names (or a newer complete one), and never goes backwards;
#   - no `checkpoints/step-N` is ever half-written (all four files present, both safetensors
#     files readable);
# and at the end that the run finishes all its steps and every kept checkpoint evaluates.
#
# usage: scripts/kill_test.sh [KILLS] [STEPS]      (defaults 20 kills, 400 steps)
#   LORA_WGPU_BIN=path/to/lora-wgpu   binary (default target/release/lora-wgpu)
#   KILL_MAX_MS=1500                  longest wait before a kill (uniform in 0..KILL_MAX_MS, after
#                                     training started for 3 kills in 4, after the launch for 1)
#   KILL_SEED=1                       seed of the wait times (reproducible schedule)
# Prints one summary line: kills, resumes, kills that hit a save in progress, failures.
# Exit status 0 only when failures = 0.
set -u -o pipefail
KILLS=${1:-20}
STEPS=${2:-400}
BIN=${LORA_WGPU_BIN:-target/release/lora-wgpu}
MAX_MS=${KILL_MAX_MS:-1500}
RANDOM=${KILL_SEED:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release first" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Mesa's lavapipe complains on stderr when this is unset; keep the logs to our own lines.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$work}
model=$work/model
out=$work/run
mkdir -p "$model"
cp "$ROOT"/tests/fixtures/tiny_gpt2/model/{config.json,model.safetensors} "$model"/
# A 99-token word-level tokenizer for the fixture model (vocab 99): w0..w97 and [UNK].
{
  printf '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,'
  printf '"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,"decoder":null,'
  printf '"model":{"type":"WordLevel","unk_token":"[UNK]","vocab":{'
  for i in $(seq 0 97); do printf '"w%d":%d,' "$i" "$i"; done
  printf '"[UNK]":98}}}'
} >"$model/tokenizer.json"
for i in $(seq 0 1999); do printf 'w%d ' $(((i * 7 + i / 5) % 98)); done >"$work/text.txt"

args=(train --model "$model" --data "$work/text.txt" --out "$out" --max-steps "$STEPS"
  --block-size 16 --batch-size 2 --rank 2 --save-every 1 --save-total-limit 3 --log-every 1
  --val-split 0.05 --eval-every 10 --sample-prompt w1)

# Temporary files and directories of saves under --out, one per line, sorted.
temps() { find "$out" \( -name '.tmp-*' -o -name '.trash-*' -o -name '.*.tmp-*' \) 2>/dev/null | sort; }

fail=0 kills=0 resumes=0 in_save=0 last_step=0
note() { echo "kill_test: $*" >&2; }
bad() { note "FAIL: $*"; fail=$((fail + 1)); }

# Every step-N must be complete and readable; `latest` must name one of them.
check_checkpoints() {
  local root=$out/checkpoints d f
  [ -d "$root" ] || return 0
  for d in "$root"/step-*; do
    [ -d "$d" ] || continue
    for f in trainer_state.json optimizer.safetensors adapter_config.json adapter_model.safetensors; do
      [ -s "$d/$f" ] || bad "$(basename "$d") lacks $f"
    done
    python3 - "$d" <<'EOF' || bad "$(basename "$d") has an unreadable file"
import json, struct, sys, os
d = sys.argv[1]
json.load(open(os.path.join(d, "trainer_state.json")))
json.load(open(os.path.join(d, "adapter_config.json")))
for f in ("optimizer.safetensors", "adapter_model.safetensors"):
    b = open(os.path.join(d, f), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
    assert 8 + n + end == len(b), (f, len(b))
EOF
  done
  if [ -f "$root/latest" ]; then
    local name
    name=$(cat "$root/latest")
    [ -d "$root/$name" ] || bad "latest names $name, which does not exist"
  fi
}

# The step the next --resume should start from: latest, or a newer complete step-N.
expected_step() {
  local root=$out/checkpoints
  [ -f "$root/latest" ] || { echo 0; return; }
  local n
  n=$(cat "$root/latest")
  echo $((10#${n#step-}))
}

for k in $(seq 1 "$KILLS"); do
  extra=()
  if [ -f "$out/checkpoints/latest" ]; then
    extra=(--resume)
  elif [ -d "$out" ]; then
    extra=(--overwrite) # killed before the first checkpoint: start again
  fi
  want=$(expected_step)
  before=$(temps)
  "$BIN" "${args[@]}" "${extra[@]}" >"$work/log" 2>&1 &
  pid=$!
  # One kill in four lands anywhere from the launch (loading, resuming); the others wait until
  # training runs ("run" line) so that they hit steps and saves.
  if [ $((k % 4)) -ne 0 ]; then
    for _ in $(seq 1 1200); do
      grep -q '^run ' "$work/log" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
  fi
  ms=$((RANDOM % MAX_MS))
  sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
  killed=0
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
    kills=$((kills + 1))
    killed=1
  fi
  wait "$pid" 2>/dev/null
  rc=$?
  # Did the kill interrupt a save? Then a checkpoint being assembled (.tmp-step-N), one being
  # deleted (.trash-step-N) or a temporary file of an atomic write (.NAME.tmp-PID) is left.
  if [ "$killed" = 1 ] && [ -n "$(temps | comm -13 <(echo "$before") -)" ]; then
    in_save=$((in_save + 1))
  fi
  if [ "${extra[*]:-}" = "--resume" ]; then
    got=$(sed -n 's/^resume   from step \([0-9]*\).*/\1/p' "$work/log")
    if [ -n "$got" ]; then
      resumes=$((resumes + 1))
      [ "$got" -ge "$want" ] || bad "resumed from step $got, but latest was step $want"
      [ "$got" -ge "$last_step" ] || bad "resumed from step $got after step $last_step: went backwards"
      last_step=$got
    elif ! grep -q '^model' "$work/log"; then
      : # killed before it got that far
    else
      grep -v XDG_RUNTIME_DIR "$work/log" | grep -q '^error' &&
        bad "resume failed: $(grep -v XDG_RUNTIME_DIR "$work/log" | grep '^error')"
    fi
  fi
  if [ "$rc" -ne 137 ] && [ "$rc" -ne 0 ]; then
    bad "run $k exited with $rc: $(tail -3 "$work/log")"
  fi
  check_checkpoints
  [ "$rc" -eq 0 ] && [ -f "$out/trainer_state.json" ] && break # finished before the kill
done

# Finish the run without a kill.
extra=()
[ -f "$out/checkpoints/latest" ] && extra=(--resume)
[ -z "${extra[*]:-}" ] && [ -d "$out" ] && extra=(--overwrite)
if "$BIN" "${args[@]}" "${extra[@]}" >"$work/log" 2>&1; then
  grep -q "\"global_step\": $STEPS" "$out/trainer_state.json" || bad "the final run did not reach step $STEPS"
else
  bad "the final run failed: $(tail -3 "$work/log")"
fi
check_checkpoints
for d in "$out"/checkpoints/step-*; do
  "$BIN" eval --model "$model" --adapter "$d" --data "$work/text.txt" --block-size 16 >/dev/null 2>"$work/eval" ||
    bad "eval of $(basename "$d") failed: $(grep error "$work/eval")"
done
leftover=$(temps | grep -c . || true)
echo "kill_test: kills=$kills resumes=$resumes kills_during_save=$in_save steps=$STEPS leftover_temp=$leftover failures=$fail"
[ "$fail" -eq 0 ]
