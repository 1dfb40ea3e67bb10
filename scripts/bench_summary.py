#!/usr/bin/env python3
"""Side-by-side summary of a lora-wgpu report (benches/report/ --json) and PyTorch + PEFT runs
(scripts/bench_peft.py output lines, one JSON file each).

    python3 scripts/bench_summary.py report.json peft_T128.json [peft_T1024.json ...]

Prints kernel GFLOP/s as % of the FMA peak probe and, for every training shape, our tokens/s
(best matmul variant and each variant) against PyTorch + PEFT's, with the ratio and peak memory.
"""
import json
import sys


def load(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if not text.startswith("{\n") else json.loads(text)
    except Exception as e:  # a missing or broken file is reported, not fatal
        print(f"(could not read {path}: {e})")
        return None


report = load(sys.argv[1]) if len(sys.argv) > 1 else None
peft = [p for p in (load(a) for a in sys.argv[2:]) if p]
print("=" * 100)
if report:
    print(f"lora-wgpu adapter: {report['adapter']} ({report['backend']}, {report['device_type']}), "
          f"driver {report['driver']} {report['driver_info']}")
    peak = report.get("peak_gflops")
    if peak:
        print(f"FMA peak probe: {peak:,.0f} GFLOP/s")
        print(f"{'matmul shape':<24}{'MxKxN':<18}" + "".join(
            f"{v['variant']:>18}" for v in report["matmul"][0]["variants"]) + "   best")
        for row in report["matmul"]:
            cells = "".join(f"{v['gflops']:>9,.1f} ({v['pct_of_peak']:>4.1f}%)" for v in row["variants"])
            print(f"{row['shape']:<24}{str(row['m'])+'x'+str(row['k'])+'x'+str(row['n']):<18}{cells}   {row['best']}")
        print("  (GFLOP/s, in brackets % of the FMA peak probe)")
        for row in report.get("lora_forward", []):
            first = f" (first kernel [workgroup] {row['workgroup_us']:.1f} us)" if "workgroup_us" in row else ""
            print(f"lora fwd r=8 {row['shape']:<16} fused [{row.get('variant', '?')}] {row['fused_us']:>9.1f} us, "
                  f"unfused {row['unfused_us']:>9.1f} us: {row['speedup']:.2f}x{first}")
print("-" * 100)
# Per-kernel-kind profile of one training step: the first kernels ("before") beside the
# adapter's own ("own"), ms per step.
steps = {(r["seq"], r["variant"]): r["step_ms_median"]
         for r in (report or {}).get("train", []) if "step_ms_median" in r}
for t in sorted({p["seq"] for p in (report or {}).get("profile", [])}):
    sets = [p for p in report["profile"] if p["seq"] == t and "error" not in p]
    for p in report["profile"]:
        if p["seq"] == t and "error" in p:
            print(f"profile T={t} [{p['set']}]: FAILED {p['error']}")
    if not sets:
        continue
    print(f"profile T={t}, ms per training step by kernel kind (each kind timed alone x its count)")
    print(f"{'kind':<38}" + "".join(f"{p['set'] + ' (' + p['lora'] + '/' + p['attention'] + ')':>30}" for p in sets))
    for i, k in enumerate(sets[0]["kinds"]):
        print(f"{k['kind']:<38}" + "".join(f"{p['kinds'][i]['ms_per_step']:>30.2f}" for p in sets))
    print(f"{'sum of kinds':<38}" + "".join(f"{p['total_ms']:>30.2f}" for p in sets))
    measured = {"before": steps.get((t, "before")), "own": steps.get((t, "default"))}
    cells = "".join(f"{measured.get(p['set']) or float('nan'):>30.2f}" for p in sets)
    print(f"{'measured step (train run)':<38}{cells}")
    cells = "".join(f"{(measured.get(p['set']) or float('nan')) - p['total_ms']:>30.2f}" for p in sets)
    print(f"{'rest (CE, embedding, AdamW, gaps)':<38}{cells}")
print("-" * 100)
for run in (report or {}).get("train", []):
    if "error" in run:
        print(f"lora-wgpu B={run['batch']} T={run['seq']} [{run['variant']}]: FAILED {run['error']}")
seqs = sorted({r["seq"] for r in (report or {}).get("train", []) if "error" not in r} | {p["seq"] for p in peft})
for t in seqs:
    ours = [r for r in (report or {}).get("train", []) if r["seq"] == t and "error" not in r]
    theirs = [p for p in peft if p["seq"] == t]
    timed = [r for r in ours if "tokens_per_s" in r]
    for r in ours:
        if r not in timed:  # a --steps 0 run: allocation only
            print(f"T={t:<5} lora-wgpu [{r['variant']:>8}] memory only: allocated {r['peak_mib']:8.1f} MiB "
                  f"(graph {r['graph_mib']:.1f} + weights {r['weights_mib']:.1f})")
            continue
        print(f"T={t:<5} lora-wgpu [{r['variant']:>8} -> {r['matmul']}] {r['tokens_per_s']:>10,.0f} tok/s  "
              f"step {r['step_ms_median']:8.2f} ms  peak alloc {r['peak_mib']:8.1f} MiB "
              f"(graph {r['graph_mib']:.1f} + weights {r['weights_mib']:.1f})")
    for p in theirs:
        print(f"T={t:<5} PyTorch {p['torch']} + PEFT ({p['device']}, {p.get('device_name', '')}) "
              f"{p['tokens_per_s']:>10,.0f} tok/s  step {p['step_s_median'] * 1e3:8.2f} ms  "
              f"peak {p['peak_mib']:8.1f} MiB ({'max_memory_allocated' if p['device'] == 'cuda' else 'RSS growth'})")
    if ours and theirs and not timed:
        print(f"T={t:<5} MEMORY lora-wgpu/PyTorch+PEFT = {ours[0]['peak_mib']:.0f} / {theirs[0]['peak_mib']:.0f} MiB "
              f"= {ours[0]['peak_mib'] / max(theirs[0]['peak_mib'], 1e-9):.2f}x")
    elif timed and theirs:
        ours = timed
        best = max(ours, key=lambda r: r["tokens_per_s"])
        for r in ours:
            if r is not best:
                print(f"T={t:<5} ratio [{r['variant']}] = {r['tokens_per_s'] / theirs[0]['tokens_per_s']:.3f}x")
        p = theirs[0]
        print(f"T={t:<5} RATIO lora-wgpu/PyTorch+PEFT tokens/s = {best['tokens_per_s'] / p['tokens_per_s']:.3f}x "
              f"(ours best: {best['matmul']}); memory ours/theirs = {best['peak_mib'] / max(p['peak_mib'], 1e-9):.2f}x")
print("=" * 100)
