#!/usr/bin/env bash
# One command for the training-step comparison: lora-wgpu and PyTorch + PEFT on the same model
# shape, batch, rank and targets, on this machine, one after the other (never at the same time),
# then their ratio.
#   scripts/bench_train.sh [--shape gpt2] [--batch 4] [--seq 128] [--rank 8] [--steps 3]
# Needs: python3 with torch, transformers and peft (pip install torch transformers peft).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bench train_step >/dev/null 2>&1 || cargo build --release --bench train_step
ours=$(cargo bench -q --bench train_step -- "$@" | tail -n 1)
theirs=$(python3 scripts/bench_peft.py "$@" | tail -n 1)
echo "lora-wgpu:      $ours"
echo "pytorch + peft: $theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"tokens/s: lora-wgpu {a['tokens_per_s']} vs PyTorch + PEFT {b['tokens_per_s']}: "
      f"ratio {a['tokens_per_s'] / b['tokens_per_s']:.3f}x")
print(f"memory: lora-wgpu graph {a['graph_mib']} MiB + weights {a['weights_mib']} MiB; "
      f"PyTorch peak {b['peak_mib']} MiB ({'GPU allocated' if b['device'] == 'cuda' else 'RSS growth'})")
PY
