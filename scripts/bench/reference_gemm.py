#!/usr/bin/env python3
"""torch.matmul GFLOP/s on the encoder's linear-layer shapes, beside `rag-node bench gemm`.

Same shapes (tokens x in) . (in x out) for all-MiniLM-L6-v2's QKV, attention output,
intermediate and output layers, same thread count, fp32 and bf16 (oneDNN, AMX where the CPU
has it). Set-up as for reference_embed.py (a venv with torch). Run:
    .venv-ref/bin/python scripts/bench/reference_gemm.py [--tokens 6400] [--threads 2] [--repeat 5]
"""
import argparse, json, statistics, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=6400)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--repeat", type=int, default=5)
a = p.parse_args()
torch.set_num_threads(a.threads)
SHAPES = [(384, 1152), (384, 384), (384, 1536), (1536, 384)]
for dtype, name in [(torch.float32, "torch-fp32"), (torch.bfloat16, "torch-bf16")]:
    row, flops, secs = {"impl": name, "threads": a.threads}, 0.0, 0.0
    for k, n in SHAPES:
        x = torch.randn(a.tokens, k).to(dtype)
        w = torch.randn(k, n).to(dtype)
        torch.matmul(x, w)
        times = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            torch.matmul(x, w)
            times.append(time.perf_counter() - t)
        t = statistics.median(times)
        f = 2.0 * a.tokens * k * n
        row[f"{k}x{n}_gflops"] = round(f / t / 1e9, 1)
        flops, secs = flops + f, secs + t
    row["all_gflops"] = round(flops / secs / 1e9, 1)
    print(json.dumps(row))
