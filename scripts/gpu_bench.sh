#!/usr/bin/env bash
# The prepared run on a lent GPU machine (no Rust toolchain, no Vulkan loader there; PyTorch,
# transformers and peft installed). scripts/gpu_pack.sh builds and packs everything into the
# git-ignored folder .gpu/ of the checkout that travels; the device call is then
#     bash .gpu/gpu_bench.sh          (run with carry [".gl", ".gpu"], from the repository root)
# It unpacks the Vulkan loader (.gl/*.deb), runs our report (adapter, FMA peak, matmul variants,
# fused LoRA, a per-kernel-kind profile of one training step before/after the GPU LoRA and
# attention kernels, training tokens/s at GPT-2 124M B=4 T=128 and T=1024 with the adapter's
# kernels and the first ones, `before`), the real-driver tests, and
# PyTorch + PEFT fp32 on the same shapes, then prints them side by side. Logs and JSON go to $OUT
# (eight files: gpu_bench.log, report.json, report_f16.json, report_coop.json, tests.txt,
# peft_T128.json, peft_T1024.json, summary.txt). Recorded runs (the figures docs/benchmarks.md
# quotes) are kept in docs/benchmarks/h200/.
# Rehearsal on a machine without a GPU (lavapipe, PyTorch on the CPU, small shapes):
#   OUT=/tmp/out REPORT_ARGS="--quick" SEQS=32 PEFT_DEVICE=cpu \
#     PEFT_ARGS="--shape tiny --batch 2 --rank 8 --steps 2 --warmup 1" bash .gpu/gpu_bench.sh
set -uo pipefail
ROOT=$(pwd)
PACK=$ROOT/.gpu
OUT=${OUT:-$ROOT/target/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_bench.log") 2>&1
export PYTHONUNBUFFERED=1
T0=$SECONDS
stamp() { echo "[gpu_bench +$((SECONDS - T0)) s] $*"; }

# 1. Vulkan loader and the NVIDIA ICD.
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
    for f in "$ROOT"/.gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if ! compgen -G '/etc/vulkan/icd.d/*nvidia*' >/dev/null &&
    ! compgen -G '/usr/share/vulkan/icd.d/*nvidia*' >/dev/null &&
    [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
stamp "loader: $(ldconfig -p | grep -m1 libvulkan.so.1 || echo none); VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}"
ls /etc/vulkan/icd.d /usr/share/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1 | tr '\n' ' '; echo
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
ldd --version | head -1

# 2. Unpack the binaries (xz, or Python's lzma where xz is missing).
BIN=/tmp/lora-wgpu-bin
mkdir -p "$BIN"
for f in "$PACK"/*.xz; do
    b=$BIN/$(basename "$f" .xz)
    if command -v xz >/dev/null; then xz -dc "$f" >"$b"; else
        python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$f" "$b"
    fi
    chmod +x "$b"
done
# The test binaries find their fixtures through the CARGO_MANIFEST_DIR they were built with.
MANIFEST=$(cat "$PACK/manifest_dir")
if [ ! -e "$MANIFEST" ]; then mkdir -p "$(dirname "$MANIFEST")" && ln -s "$ROOT" "$MANIFEST"; fi
export WGPU_BACKEND=vulkan RUST_BACKTRACE=1

# 3. Our report.
stamp "report"
timeout 240 "$BIN/report" --json "$OUT/report.json" --train-variants default,before \
    --max-train-seconds 8 ${REPORT_ARGS:-}
stamp "report exit $?"

# 3b. The same training with the linear layers' frozen weights stored as f16 (SHADER_F16).
stamp "report f16 weights"
timeout 120 "$BIN/report" --json "$OUT/report_f16.json" --no-kernels --no-profile \
    --f16-weights --train-variants default --max-train-seconds 6 ${REPORT_ARGS:-}
stamp "report f16 exit $?"

# 3c. Cooperative matrices (tensor cores, f16 operands, f32 sums) where the driver offers them:
# every matmul variant side by side with `coop`, and training with it; then its tests.
stamp "report cooperative matrix"
LORA_WGPU_COOPMAT=1 timeout 180 "$BIN/report" --json "$OUT/report_coop.json" --no-profile \
    --train-variants default --max-train-seconds 6 ${REPORT_ARGS:-}
stamp "report coop exit $?"
for t in matmul gpt2_parity; do
    LORA_WGPU_COOPMAT=1 timeout 60 "$BIN/$t" cooperative 2>&1 | tail -n 5 | tee -a "$OUT/tests.txt"
    stamp "test $t cooperative exit ${PIPESTATUS[0]}" | tee -a "$OUT/tests.txt"
done

# 4. Real-driver correctness: the kernel and model tests.
for t in matmul kernels gpt2_ops gpt2_parity llama_ops llama_parity; do
    stamp "test $t"
    timeout 60 "$BIN/$t" --test-threads 4 2>&1 | grep -Ev '^test .* ok$' | tee -a "$OUT/tests.txt" | tail -n 25
    stamp "test $t exit ${PIPESTATUS[0]}" | tee -a "$OUT/tests.txt"
done

# 5. PyTorch + PEFT, fp32, same shapes.
for t in ${SEQS:-128 1024}; do
    stamp "pytorch+peft T=$t"
    timeout 100 python3 "$PACK/bench_peft.py" --device "${PEFT_DEVICE:-cuda}" --seq "$t" \
        ${PEFT_ARGS:---batch 4 --rank 8 --steps 20 --warmup 3} | tail -n 1 | tee "$OUT/peft_T$t.json"
done

# 5b. Llama-family shapes (SmolLM2-135M, Qwen2.5-0.5B; LoRA on q_proj,v_proj): ours, then
# PyTorch + PEFT, then side by side.
for shape in ${LLAMA_SHAPES:-smollm2-135m qwen2.5-0.5b}; do
    stamp "report $shape"
    timeout 120 "$BIN/report" --json "$OUT/report_$shape.json" --no-kernels --no-profile \
        --shape "$shape" --train-variants default --max-train-seconds 6 ${REPORT_ARGS:-}
    for t in ${SEQS:-128 1024}; do
        timeout 100 python3 "$PACK/bench_peft.py" --device "${PEFT_DEVICE:-cuda}" --seq "$t" \
            --shape "$shape" ${PEFT_ARGS:---batch 4 --rank 8 --steps 20 --warmup 3} | tail -n 1 |
            tee "$OUT/peft_${shape}_T$t.json"
    done
    python3 "$PACK/bench_summary.py" "$OUT/report_$shape.json" "$OUT"/peft_${shape}_T*.json |
        sed "s/^/$shape: /" | tee -a "$OUT/summary_llama.txt"
done

# 6. Side by side.
stamp "summary"
python3 "$PACK/bench_summary.py" "$OUT/report.json" "$OUT"/peft_T*.json | tee "$OUT/summary.txt"
python3 "$PACK/bench_summary.py" "$OUT/report_f16.json" "$OUT"/peft_T*.json | grep RATIO |
    sed 's/^/f16 weights: /' | tee -a "$OUT/summary.txt"
[ -e "$OUT/report_coop.json" ] && python3 "$PACK/bench_summary.py" "$OUT/report_coop.json" \
    "$OUT"/peft_T*.json | grep RATIO | sed 's/^/cooperative matrix: /' | tee -a "$OUT/summary.txt"
grep -h "test result\|exit" "$OUT/tests.txt"
stamp "done"
