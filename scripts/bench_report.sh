#!/usr/bin/env bash
# One command, on this machine: our training tokens/s (on the adapter wgpu picks: lavapipe on a
# machine without a GPU) beside PyTorch + PEFT on the CPU for the same model shape, batch,
# sequence length, rank and targets (c_attn,c_proj, alpha 2r, fp32, AdamW), with the ratio and
# peak memory; plus matmul GFLOP/s of the adapter's variant as a % of its FMA peak probe, and the
# fused LoRA forward against the unfused path. The two trainings run one after the other.
#   scripts/bench_report.sh [--quick] [--shape gpt2] [--batch 4] [--seq 128] [--rank 8] [--steps 3]
#                           [--memory-seq 1024]
# --memory-seq: also compare peak memory at that sequence length (default 1024 without --quick,
# 0 = skip): our graph's allocation (built, no steps) beside PyTorch + PEFT's after one step.
# --quick: small kernel shapes and, unless given, the tiny model at B=2 T=32 (a few minutes on
# lavapipe). The full default (GPT-2 124M, B=4, T=128) takes many minutes on lavapipe.
# Needs python3 with torch, transformers and peft. JSON goes to $OUT (default target/bench-report).
# Recorded runs (the output and JSON quoted in docs/benchmarks.md) are kept in docs/benchmarks/cpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=""
shape="" batch="" seq="" rank=8 steps=3 memory_seq=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=--quick; shift ;;
        --shape) shape=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --seq) seq=$2; shift 2 ;;
        --rank) rank=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --memory-seq) memory_seq=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -n "$quick" ]; then
    shape=${shape:-tiny} batch=${batch:-2} seq=${seq:-32} memory_seq=${memory_seq:-0}
else
    shape=${shape:-gpt2} batch=${batch:-4} seq=${seq:-128} memory_seq=${memory_seq:-1024}
fi
OUT=${OUT:-target/bench-report}
mkdir -p "$OUT"
rm -f "$OUT"/peft_T*.json "$OUT"/peft_memory*.json "$OUT"/report*.json
args=(--shape "$shape" --batch "$batch" --seq "$seq" --rank "$rank" --steps "$steps" --warmup 1)
cargo build --release --bench report >/dev/null 2>&1 || cargo build --release --bench report
cargo bench -q --bench report -- $quick "${args[@]}" --max-train-seconds 1e9 --json "$OUT/report.json"
python3 scripts/bench_peft.py --device cpu "${args[@]}" | tail -n 1 >"$OUT/peft_T$seq.json"
python3 scripts/bench_summary.py "$OUT/report.json" "$OUT/peft_T$seq.json"
if [ "$memory_seq" != 0 ]; then
    margs=(--shape "$shape" --batch "$batch" --seq "$memory_seq" --rank "$rank")
    cargo bench -q --bench report -- --no-kernels --no-profile "${margs[@]}" --steps 0 \
        --json "$OUT/report_memory.json"
    python3 scripts/bench_peft.py --device cpu "${margs[@]}" --steps 1 --warmup 0 | tail -n 1 \
        >"$OUT/peft_memory_T$memory_seq.json"
    python3 scripts/bench_summary.py "$OUT/report_memory.json" "$OUT/peft_memory_T$memory_seq.json" |
        grep -E "MEMORY|memory only|RSS"
fi
