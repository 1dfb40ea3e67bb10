#!/usr/bin/env bash
# Soak test (issue 5): a long training run at the smallest shapes, sampling the process's host
# memory (VmRSS from /proc/PID/status) and the training graph's GPU allocation (gpu_bytes in
# metrics.jsonl, TrainGraph::allocated_bytes) while it runs; reports first-step vs last-step
# memory. A leak shows as RSS growing with the step count.
#
# usage: scripts/soak.sh [STEPS] [SAMPLE_SECONDS]        (defaults 2000 steps, every 5 s)
#   LORA_WGPU_BIN=path      binary (default target/release/lora-wgpu)
#   SOAK_MODEL=tiny         --model (default: the built-in tiny model, GPT-2 vocabulary; about
#                           1-2 s a step on lavapipe with 2 cores); `fixture` = the 2-layer test
#                           fixture with a 99-word tokenizer (about 0.1 s a step)
#   SOAK_BLOCK=8 SOAK_BATCH=1 SOAK_RANK=1
# Writes the samples to soak.tsv in a temporary directory and prints the summary; exit 1 when
# the RSS of the last sample exceeds the first sample after step 1 by more than SOAK_MAX_GROWTH_MB
# (default 64).
set -u -o pipefail
STEPS=${1:-2000}
EVERY=${2:-5}
BIN=${LORA_WGPU_BIN:-target/release/lora-wgpu}
MODEL=${SOAK_MODEL:-tiny}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release first" >&2; exit 2; }
work=$(mktemp -d)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$work}
out=$work/run
data=$ROOT/data/corpus.txt
prompt=Alice
if [ "$MODEL" = fixture ]; then
  # The test fixture (2 layers, 48 channels, vocab 99: about 15x faster per step than tiny on
  # lavapipe) with a 99-word tokenizer and text in its words.
  MODEL=$work/model
  mkdir -p "$MODEL"
  cp "$ROOT"/tests/fixtures/tiny_gpt2/model/{config.json,model.safetensors} "$MODEL"/
  {
    printf '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,'
    printf '"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,"decoder":null,'
    printf '"model":{"type":"WordLevel","unk_token":"[UNK]","vocab":{'
    for i in $(seq 0 97); do printf '"w%d":%d,' "$i" "$i"; done
    printf '"[UNK]":98}}}'
  } >"$MODEL/tokenizer.json"
  data=$work/text.txt
  for i in $(seq 0 19999); do printf 'w%d ' $(((i * 7 + i / 5) % 98)); done >"$data"
  prompt=w1
fi
"$BIN" train --model "$MODEL" --data "$data" --out "$out" --max-steps "$STEPS" \
  --block-size "${SOAK_BLOCK:-8}" --batch-size "${SOAK_BATCH:-1}" --rank "${SOAK_RANK:-1}" \
  --log-every 10 --save-every 500 --save-total-limit 2 --val-split 0.002 --eval-every 1000 \
  --sample-prompt "$prompt" >"$work/log" 2>&1 &
pid=$!
start=$(date +%s)
printf 't_s\tstep\trss_kib\tgpu_bytes\n' >"$work/soak.tsv"
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)
  last=$(tail -n 1 "$out/metrics.jsonl" 2>/dev/null)
  step=$(sed -n 's/.*"step":\([0-9]*\).*/\1/p' <<<"$last")
  gpu=$(sed -n 's/.*"gpu_bytes":\([0-9]*\).*/\1/p' <<<"$last")
  [ -n "$rss" ] && printf '%s\t%s\t%s\t%s\n' $(($(date +%s) - start)) "${step:-0}" "$rss" "${gpu:-0}" >>"$work/soak.tsv"
  sleep "$EVERY"
done
wait "$pid"
rc=$?
secs=$(($(date +%s) - start))
[ "$rc" -eq 0 ] || { echo "soak: training failed (exit $rc):" >&2; tail -5 "$work/log" >&2; exit 1; }
# First sample with a logged step, and the last sample taken while steps were still running.
summary=$(awk -F'\t' -v max="${SOAK_MAX_GROWTH_MB:-64}" '
  NR > 1 && $2 > 0 { if (!first) { first = $3; fs = $2; fg = $4 } if ($2 != ls) { last = $3; ls = $2; lg = $4 } if ($3 > peak) peak = $3; n++ }
  END {
    printf "soak: %d samples; step %d: RSS %.1f MiB, GPU graph %.2f MiB; step %d: RSS %.1f MiB, GPU graph %.2f MiB; peak RSS %.1f MiB; growth %+.1f MiB",
      n, fs, first / 1024, fg / 1048576, ls, last / 1024, lg / 1048576, peak / 1024, (last - first) / 1024
    exit ((last - first) / 1024 > max) ? 1 : 0
  }' "$work/soak.tsv")
ok=$?
echo "$summary; $STEPS steps in $secs s"
echo "soak: samples in $work/soak.tsv"
exit $ok
