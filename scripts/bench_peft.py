#!/usr/bin/env python3
"""Time PyTorch + PEFT training steps on the same configuration as benches/train_step.rs.

    python scripts/bench_peft.py [--shape gpt2] [--batch 4] [--seq 128] [--rank 8] [--steps 3] [--device cpu|cuda]

GPT-2 or a Llama-family model of the named shape (smollm2-135m, smollm2-360m, qwen2.5-0.5b,
qwen3-0.6b, llama-3.2-1b: the published configs) with random weights, LoRA r on the family's
default targets (c_attn,c_proj for GPT-2, q_proj,v_proj otherwise; alpha 2r, dropout 0), AdamW,
fp32 (TF32 off: float32 matmuls run as true fp32 on NVIDIA GPUs), eager attention as the
Rust side computes it. Prints one JSON line
like the Rust bench: median step time, tokens/s, peak memory (torch.cuda.max_memory_allocated on
a GPU, peak RSS growth on the CPU).
"""
import argparse
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

SHAPES = {"gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20),
          "gpt2-xl": (1600, 48, 25), "tiny": (128, 4, 4)}
# Llama-family shapes as their config.json has them (the same as LlamaConfig::named in Rust).
LLAMA_SHAPES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                     max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                     tie_word_embeddings=True)),
    "smollm2-360m": ("llama", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                     num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                     max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                     tie_word_embeddings=True)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                     num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                     max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     tie_word_embeddings=True)),
    "qwen3-0.6b": ("qwen3", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                   num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                   max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                   tie_word_embeddings=True)),
    "llama-3.2-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                     rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192},
                     tie_word_embeddings=True)),
}

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="gpt2")
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--rank", type=int, default=8)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--warmup", type=int, default=1)
ap.add_argument("--device", default="cpu")
a = ap.parse_args()
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")

torch.manual_seed(0)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if a.shape in LLAMA_SHAPES:
    from transformers import AutoConfig, AutoModelForCausalLM
    model_type, kw = LLAMA_SHAPES[a.shape]
    cfg = AutoConfig.for_model(model_type, hidden_act="silu", attn_implementation="eager", **kw)
    model = AutoModelForCausalLM.from_config(cfg).float().to(a.device)
    targets, fan_in_fan_out, vocab = ["q_proj", "v_proj"], False, kw["vocab_size"]
else:
    c, layers, heads = SHAPES[a.shape]
    cfg = GPT2Config(n_embd=c, n_layer=layers, n_head=heads,
                     n_positions=1024 if a.shape != "tiny" else 256,
                     vocab_size=50257, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).to(a.device)
    targets, fan_in_fan_out, vocab = ["c_attn", "c_proj"], True, 50257
model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                                         target_modules=targets, fan_in_fan_out=fan_in_fan_out,
                                         task_type="CAUSAL_LM"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, vocab, (a.batch, a.seq), device=a.device)
if a.device == "cuda":
    torch.cuda.reset_peak_memory_stats()


def step():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    if a.device == "cuda":
        torch.cuda.synchronize()
    return loss.item()


for _ in range(a.warmup):
    step()
times = []
for _ in range(a.steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
times.sort()
median = times[len(times) // 2]
if a.device == "cuda":
    peak_mib = torch.cuda.max_memory_allocated() / 2**20
else:
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
print(json.dumps({"impl": "pytorch+peft", "device": a.device, "device_name": name,
                  "torch": torch.__version__, "step_s_all": [round(t, 5) for t in times],
                  "threads": torch.get_num_threads(), "shape": a.shape, "batch": a.batch, "seq": a.seq,
                  "rank": a.rank, "step_s_median": round(median, 5),
                  "tokens_per_s": round(a.batch * a.seq / median, 2), "peak_mib": round(peak_mib, 1)}))
