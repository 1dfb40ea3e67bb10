#!/usr/bin/env bash
# Build the report and test binaries in release, strip and xz them, and put them with
# gpu_bench.sh, bench_peft.py and bench_summary.py into DEST (default: .gpu/ of the repository
# the device tool sends, which must be git-ignored: `echo /.gpu/ >> .git/info/exclude`).
#   scripts/gpu_pack.sh [DEST]
# Then call the device with carry [".gl", ".gpu"] and the command `bash .gpu/gpu_bench.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu}
mkdir -p "$DEST"
rm -f "$DEST"/*.xz
msgs=$(mktemp)
cargo build --release --bench report --message-format=json-render-diagnostics >"$msgs"
cargo test --release --no-run --test matmul --test kernels --test gpt2_ops --test gpt2_parity \
    --test llama_ops --test llama_parity \
    --message-format=json-render-diagnostics >>"$msgs"
python3 - "$msgs" "$DEST" <<'PY'
import json, shutil, subprocess, sys
dest = sys.argv[2]
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["bench"], ["test"]):
        name = m["target"]["name"]
        out = f"{dest}/{name}"
        shutil.copy(m["executable"], out)
        subprocess.run(["strip", out], check=True)
        subprocess.run(["xz", "-f", "-6", "-T2", out], check=True)
        print(f"packed {name}")
PY
rm -f "$msgs"
pwd >"$DEST/manifest_dir"
cp scripts/gpu_bench.sh scripts/bench_peft.py scripts/bench_summary.py "$DEST/"
# The newest GLIBC symbol version the binaries need (the device image must have at least this).
for f in "$DEST"/*.xz; do xz -dc "$f" | strings | grep -o 'GLIBC_[0-9.]*' ; done | sort -Vu | tail -n 1 |
    sed 's/^/newest glibc symbol needed: /'
du -ch "$DEST"/* | tail -n 1
