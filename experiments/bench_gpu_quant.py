"""GPU benchmark of our weight-only quantized layers on a Llama-3.1-8B-shaped model with random bf16 weights.

Needs a CUDA device and triton (exits with an error otherwise: nothing is simulated). Prints, in order:
  1-2. per 8B projection shape at batch 1: bf16 F.linear vs Triton int8 vs Triton int4 (group 64) median ms, GB/s
     of weight bytes read, and each Triton matmul's max abs error vs the dequantized torch matmul
  3. device-to-device copy bandwidth (the yardstick)
  4. batch-1 decode tok/s of the own engine, quant = none (bf16) / int8 / int4, in interleaved rounds, with
     weight bytes, speedup over bf16 and achieved bandwidth = (weight + KV bytes read per token) x tok/s
Anchor: torchao on an H100 reports 126.9 tok/s bf16 and 241.4 tok/s int4 weight-only group 64 (Llama-3.1-8B,
batch 1).

    python experiments/bench_gpu_quant.py                 # 32 layers (16 GB of bf16 weights)
    python experiments/bench_gpu_quant.py --layers 4      # quick smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import create_engine  # noqa: E402
from engines.base import (  # noqa: E402
    Attention,
    Graphs,
    ModelSpec,
    Quant,
    Request,
    SamplingParams,
    Technique,
)
from engines.own.quant.formats import (  # noqa: E402
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)
from engines.own.quant.linear import Int4Linear, Int8Linear  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_own import copy_bandwidth, model_config, timed_ms  # noqa: E402  (one timing rule for both GPU checks)

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
GROUP = 64


def layers_for(w: torch.Tensor) -> dict:
    q8, q4 = quantize_int8(w), quantize_int4(w, GROUP)
    return {
        "int8": (Int8Linear(q8, None, torch.bfloat16, "triton").cuda(), dequantize_int8(q8)),
        "int4": (Int4Linear(q4, None, torch.bfloat16, "triton").cuda(), dequantize_int4(q4)),
    }


def kernel_section() -> None:
    print("\n== 1-2. batch-1 matmul: median ms, weight GB/s, and max abs error vs the dequantized torch matmul ==")
    print(f"{'shape':>8} {'bf16 ms':>8} {'int8 ms':>8} {'int4 ms':>8} {'bf16 GB/s':>9} {'int8 GB/s':>9} "
          f"{'int4 GB/s':>9} {'err int8':>9} {'err int4':>9}")  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, generator=gen) * 0.02
        x = torch.randn(1, k, generator=gen).cuda().bfloat16()
        w_bf16 = w.cuda().bfloat16()
        t = {"bf16": timed_ms(lambda: F.linear(x, w_bf16))}
        gbs = {"bf16": w_bf16.numel() * 2 / t["bf16"] / 1e6}
        errs = {}
        for kind, (layer, deq) in layers_for(w).items():
            t[kind] = timed_ms(lambda: layer(x))
            gbs[kind] = layer.weight_bytes() / t[kind] / 1e6
            ref = (x.float() @ deq.cuda().T)
            errs[kind] = (layer(x).float() - ref).abs().max().item()
        print(f"{name:>8} {t['bf16']:8.3f} {t['int8']:8.3f} {t['int4']:8.3f} {gbs['bf16']:9.0f} {gbs['int8']:9.0f} "
              f"{gbs['int4']:9.0f} {errs['int8']:9.2e} {errs['int4']:9.2e}")  # fmt: skip


def decode_rounds(layers: int, rounds: int, new_tokens: int, copy_gbs: float) -> None:
    print(f"\n== 4. batch-1 decode, own engine, {layers} layers, {new_tokens} new tokens after a 128-token prompt, "
          f"{rounds} interleaved rounds, graphs=cuda_graphs ==")  # fmt: skip
    spec = ModelSpec("llama-3.1-8b-random", None, "bfloat16", model_config("llama3-8b", layers, 4096), seed=0)
    prompt = list(range(1000, 1128))
    results: dict[str, list[float]] = {}
    facts: dict[str, tuple[int, int]] = {}
    for r in range(rounds):
        for quant in ("none", "int8", "int4"):
            group = GROUP if quant == "int4" else None
            technique = Technique(quant=Quant(quant), quant_group_size=group, graphs=Graphs.cuda_graphs,
                                  attention=Attention.triton)  # CUDA graphs replay our Triton attention
            engine = create_engine("own", spec, technique, {"max_num_seqs": 1, "max_model_len": 4096}, "cuda")
            request = [Request("r", prompt, SamplingParams(max_tokens=new_tokens, ignore_eos=True))]
            engine.generate([Request("w", prompt, SamplingParams(max_tokens=8, ignore_eos=True))])  # warm-up
            out = engine.generate(request)[0]
            times = out.token_times
            tok_s = (len(times) - 1) / (times[-1] - times[0])
            results.setdefault(quant, []).append(tok_s)
            stats = engine.stats()
            facts[quant] = (stats["quantization"]["weight_bytes"], stats["kv_bytes_per_token"])
            engine.close()
            del engine
            gc.collect()
            torch.cuda.empty_cache()
            print(f"round {r + 1} {quant:>5}: {tok_s:7.1f} tok/s  load {os.getloadavg()[0]:.2f}")
    base = statistics.median(results["none"])
    print(f"{'quant':>6} {'weight GB':>9} {'median tok/s':>12} {'min-max':>15} {'speedup':>7} {'GB/s':>7} {'of copy':>7}")
    for quant, values in results.items():
        weights, kv_per_token = facts[quant]
        tok_s = statistics.median(values)
        read = weights + kv_per_token * (128 + new_tokens / 2)  # weights + the mean cache read per step
        print(f"{quant:>6} {weights / 1e9:9.2f} {tok_s:12.1f} {min(values):7.1f}-{max(values):<7.1f} "
              f"{tok_s / base:7.2f} {read * tok_s / 1e9:7.0f} {read * tok_s / 1e9 / copy_gbs:7.0%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_quant.py needs a CUDA device")
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  started {time.strftime('%H:%M:%S')}")
    kernel_section()
    copy_gbs = copy_bandwidth(1 << 30) / 1e9  # GB/s
    decode_rounds(args.layers, args.rounds, args.new_tokens, copy_gbs)


if __name__ == "__main__":
    main()
