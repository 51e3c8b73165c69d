"""GPU check of our engine (engines/own): a Llama-3.1-8B-shaped model with random bf16 weights on CUDA.

Prints, in order:
  1. Triton kernels vs the torch reference: max abs error (decode, split-K decode, prefill, store_kv)
  2. decode-attention microbenchmark: Triton vs reference vs SDPA over dense K/V, per batch x context
  3. device-to-device copy bandwidth (the roofline for 4), measured in this run
  4. batch-1 decode tok/s, eager vs cuda_graphs (one model load), and bandwidth utilisation =
     (weight + KV bytes read per token) x tok/s / copy bandwidth
  5. offline throughput: own engine vs HF transformers on the same random-weight shape

Without CUDA it says which parts it skips and runs the rest on CPU at a tiny shape (kernels through the
Triton interpreter when TRITON_INTERPRET=1), so the script itself is exercised anywhere:

    python experiments/bench_gpu_own.py            # GPU: everything (experiments/gpu_check.sh runs this)
    python experiments/bench_gpu_own.py --layers 4 --skip-hf   # quick smoke run
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
from engines.base import Attention, Graphs, ModelSpec, Request, SamplingParams, Technique  # noqa: E402
from engines.own.kernels import reference  # noqa: E402

BLOCK = 16
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# (heads, kv heads, head_dim, hidden, ffn, vocab): Llama-3.1-8B on a GPU; a SmolLM2-sized stand-in on CPU
SHAPES = {"llama3-8b": (32, 8, 128, 4096, 14336, 128256), "small": (8, 2, 64, 512, 1536, 32000)}


def model_config(shape: str, layers: int, max_len: int) -> dict:
    heads, kv_heads, head_dim, hidden, ffn, vocab = SHAPES[shape]
    return {
        "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "max_position_embeddings": max_len, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip


def applied(technique: Technique) -> str:
    return " ".join(f"{name}={getattr(getattr(technique, name), 'value', getattr(technique, name))}"
                    for name in technique.__dataclass_fields__)  # fmt: skip


def skipped(what: str) -> None:
    print(f"SKIPPED (no CUDA device): {what}")


def timed_ms(fn, iters: int = 30, warmup: int = 3) -> float:
    """Median milliseconds of `fn()`: CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if ON_GPU:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            started = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - started))
    return statistics.median(times)


def random_paged(batch: int, context: int, kv_heads: int, head_dim: int, dtype: torch.dtype, gen: torch.Generator):
    """A cache holding `batch` sequences of `context` tokens in shuffled blocks, and their block tables."""
    width = -(-context // BLOCK)
    num_blocks = batch * width
    shape = (num_blocks, BLOCK, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen, device=DEVICE).to(dtype)
    v_cache = torch.randn(shape, generator=gen, device=DEVICE).to(dtype)
    tables = torch.randperm(num_blocks, generator=gen, device=DEVICE).to(torch.int32).view(batch, width)
    return k_cache, v_cache, tables


def kernel_errors(triton_kernels, shape: str) -> None:
    heads, kv_heads, head_dim = SHAPES[shape][:3]
    print(f"\n== 1. Triton kernels vs torch reference (max abs error), {heads}/{kv_heads} heads, dim {head_dim} ==")
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    lens_list, q_lens_list = ([1, 100, 1000, 3001], [1, 37, 200, 513]) if ON_GPU else ([1, 40, 90], [1, 17, 33])
    lens = torch.tensor(lens_list, dtype=torch.int32, device=DEVICE)
    q_lens = torch.tensor(q_lens_list, dtype=torch.int32, device=DEVICE)
    cu = F.pad(q_lens.cumsum(0), (1, 0)).to(torch.int32)
    scale = head_dim**-0.5
    # the interpreter computes bf16 tl.dot on raw bits: on CPU the half-precision row is float16
    for dtype in (torch.float32, torch.bfloat16 if ON_GPU else torch.float16):
        k_cache, v_cache, tables = random_paged(len(lens_list), max(lens_list), kv_heads, head_dim, dtype, gen)
        q = torch.randn(len(lens_list), heads, head_dim, generator=gen, device=DEVICE).to(dtype)
        expected = reference.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale)
        decode = triton_kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale)
        split = triton_kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, num_splits=4)
        q = torch.randn(int(q_lens.sum()), heads, head_dim, generator=gen, device=DEVICE).to(dtype)
        prefill = [f(q, k_cache, v_cache, tables, cu, lens, scale) for f in (
            reference.paged_prefill_attention, triton_kernels.paged_prefill_attention)]  # fmt: skip
        k, v = (torch.randn(64, kv_heads, head_dim, generator=gen, device=DEVICE).to(dtype) for _ in range(2))
        slots = torch.randperm(k_cache.shape[0] * BLOCK, generator=gen, device=DEVICE)[:64]
        slots[::7] = -1
        caches = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
        reference.store_kv(k, v, *caches[0], slots)
        triton_kernels.store_kv(k, v, *caches[1], slots)
        store_err = max((a - b).abs().max().item() for a, b in zip(caches[0], caches[1]))
        err = lambda a, b: (a.float() - b.float()).abs().max().item()  # noqa: E731
        print(f"{str(dtype):15s} decode {err(decode, expected):.3e}   split-K(4) {err(split, expected):.3e}   "
              f"prefill {err(*prefill):.3e}   store_kv {store_err:.3e}")  # fmt: skip


def sdpa_decode(q, keys, values, scale):
    return F.scaled_dot_product_attention(q, keys, values, scale=scale, enable_gqa=True)


def decode_microbench(triton_kernels, shape: str) -> None:
    heads, kv_heads, head_dim = SHAPES[shape][:3]
    print(f"\n== 2. decode attention, bf16, {heads} q heads / {kv_heads} kv heads / head_dim {head_dim} (median ms) ==")
    print(f"{'batch':>5} {'context':>7} {'triton':>9} {'reference':>10} {'sdpa dense':>10} {'triton GB/s':>11}")
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    scale = head_dim**-0.5
    for batch in (1, 8, 32, 64):
        for context in (512, 2048, 8192):
            k_cache, v_cache, tables = random_paged(batch, context, kv_heads, head_dim, torch.bfloat16, gen)
            lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
            q = torch.randn(batch, heads, head_dim, generator=gen, device=DEVICE).to(torch.bfloat16)
            args = (q, k_cache, v_cache, tables, lens, scale)
            t_triton = timed_ms(lambda: triton_kernels.paged_decode_attention(*args))
            t_ref = timed_ms(lambda: reference.paged_decode_attention(*args), iters=10)
            # SDPA gets K/V already contiguous per sequence (no paging): a dense baseline.
            dense_k = k_cache[tables.long()].reshape(batch, -1, kv_heads, head_dim).transpose(1, 2).contiguous()
            dense_v = v_cache[tables.long()].reshape(batch, -1, kv_heads, head_dim).transpose(1, 2).contiguous()
            q4 = q[:, :, None, :]
            t_sdpa = timed_ms(lambda: sdpa_decode(q4, dense_k, dense_v, scale))
            kv_bytes = 2 * batch * context * kv_heads * head_dim * 2
            print(f"{batch:5d} {context:7d} {t_triton:9.3f} {t_ref:10.3f} {t_sdpa:10.3f} "
                  f"{kv_bytes / t_triton / 1e6:11.1f}")  # fmt: skip
            del k_cache, v_cache, dense_k, dense_v
            torch.cuda.empty_cache()


def copy_bandwidth(size: int) -> float:
    """Bytes per second moved (read + write) by a device-to-device copy of `size` bytes."""
    src = torch.empty(size, dtype=torch.uint8, device=DEVICE).random_()
    dst = torch.empty_like(src)
    ms = timed_ms(lambda: dst.copy_(src), iters=20)
    bandwidth = 2 * src.numel() / (ms / 1e3)
    print(f"\n== 3. {DEVICE} copy bandwidth (the roofline) ==\n{size / 2**20:.0f} MiB copy: {ms:.3f} ms -> "
          f"{bandwidth / 1e9:.1f} GB/s (read + write)")  # fmt: skip
    del src, dst
    return bandwidth


def free(engine) -> None:
    engine.close()
    del engine
    gc.collect()
    if ON_GPU:
        torch.cuda.empty_cache()


def random_requests(count: int, prompt_len: int, gen_len: int, vocab: int, seed: int) -> list[Request]:
    gen = torch.Generator().manual_seed(seed)
    sampling = SamplingParams(max_tokens=gen_len, ignore_eos=True)
    return [
        Request(f"r{i}", torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(), sampling)
        for i in range(count)
    ]


def decode_rate(engine, request: Request) -> float:
    out = engine.generate([request])[0]
    return (len(out.token_ids) - 1) / (out.token_times[-1] - out.token_times[0])


def own_engine(spec: ModelSpec, args):
    """One `own` engine (device defaults) for sections 4 and 5: an 8B model loads once."""
    started = time.perf_counter()
    options = dict(max_num_seqs=args.num_requests, max_num_batched_tokens=8192)
    engine = create_engine("own", spec, Technique(), options, DEVICE)
    print(f"\nown: {applied(engine.technique)}; load+setup {time.perf_counter() - started:.0f} s")
    if ON_GPU:
        plan = engine.memory_plan
        print(f"KV budget (vLLM's rule): {engine.llm.kv.num_blocks} blocks of {BLOCK} tokens from total "
              f"{plan['total_bytes'] / 2**30:.1f} GiB, weights {plan['weights_bytes'] / 2**30:.1f} GiB, step peak "
              f"{plan['activation_peak_bytes'] / 2**30:.2f} GiB, outside torch {plan['non_torch_bytes'] / 2**30:.2f} GiB")
    engine.generate(random_requests(2, 16, 8, spec.random_config["vocab_size"], seed=3))  # compile kernels
    return engine


def batch1_decode(engine, args, bandwidth: float) -> None:
    print(f"\n== 4. batch-1 decode, {args.layers} layers, prompt {args.prompt_len}, {args.decode_tokens} tokens ==")
    request = random_requests(1, args.prompt_len, args.decode_tokens, engine.model.config.vocab_size, seed=2)[0]
    params = dict(engine.model.named_parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
    weight_bytes -= params["embed"].numel() * params["embed"].element_size()  # one row per token is read
    kv_bytes = (args.prompt_len + args.decode_tokens / 2) * engine.kv_bytes_per_token
    graph_hook = engine.runner.decode_hook
    modes = [("cuda_graphs", graph_hook), ("eager", None)] if graph_hook is not None else [("eager", None)]
    if graph_hook is None:
        skipped("CUDA graphs vs eager (graphs need CUDA)")
    rates = {}
    for label, hook in modes:  # the graph runner is the runner's decode hook; None runs the same model eagerly
        engine.runner.decode_hook = hook
        rates[label] = tok_s = statistics.median(decode_rate(engine, request) for _ in range(args.repeats))
        used = (weight_bytes + kv_bytes) * tok_s / bandwidth
        print(f"{label:12s} {tok_s:8.1f} tok/s  ({1e3 / tok_s:.2f} ms/token, median of {args.repeats})  "
              f"bytes/token {weight_bytes / 1e9:.3f} GB weights + {kv_bytes / 1e6:.1f} MB KV  "
              f"-> {100 * used:.1f}% of copy bandwidth (goal >= 85%)")  # fmt: skip
    engine.runner.decode_hook = graph_hook
    if len(rates) == 2:
        print(f"cuda_graphs / eager: {rates['cuda_graphs'] / rates['eager']:.2f}x")


def offline_run(label: str, engine, requests: list[Request], prompt_tokens: int) -> float:
    if ON_GPU:
        torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = engine.generate(requests)
    wall = time.perf_counter() - started
    generated = sum(len(o.token_ids) for o in outputs)
    errors = [o.error for o in outputs if o.finish_reason == "error"]
    print(f"{label:8s} {generated / wall:9.1f} generated tok/s  ({(generated + prompt_tokens) / wall:.1f} total "
          f"tok/s, {wall:.1f} s)  {applied(engine.technique)}" + (f"  ERRORS: {errors[:2]}" if errors else ""))
    return generated / wall


def offline_throughput(own, spec: ModelSpec, args) -> None:
    print(f"\n== 5. offline throughput: {args.num_requests} requests x prompt {args.prompt_len} + "
          f"{args.gen_len} generated tokens, HF at the same concurrency ==")  # fmt: skip
    vocab = spec.random_config["vocab_size"]
    requests = random_requests(args.num_requests, args.prompt_len, args.gen_len, vocab, 4)
    own_rate = offline_run("own", own, requests, args.num_requests * args.prompt_len)
    free(own)
    if args.skip_hf:
        return
    hf = create_engine("hf", spec, Technique(), dict(batch_size=args.num_requests), DEVICE)
    hf.generate(random_requests(2, 16, 4, vocab, seed=5))  # warm-up
    hf_rate = offline_run("hf", hf, requests, args.num_requests * args.prompt_len)
    free(hf)
    print(f"own / hf: {own_rate / hf_rate:.2f}x (goal >= 3x on a GPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32 if ON_GPU else 2, help="decoder layers (Llama-3-8B: 32)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--prompt-len", type=int, default=256 if ON_GPU else 64)
    parser.add_argument("--decode-tokens", type=int, default=256 if ON_GPU else 32, help="batch-1 run length")
    parser.add_argument("--repeats", type=int, default=3, help="batch-1 runs per mode (median)")
    parser.add_argument("--gen-len", type=int, default=128 if ON_GPU else 16, help="tokens per request, offline")
    parser.add_argument("--num-requests", type=int, default=64 if ON_GPU else 8)
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF transformers baseline")
    parser.add_argument("--skip-microbench", action="store_true", help="leave out section 2")
    parser.add_argument("--kernels-only", action="store_true", help="sections 1-3 only (no model)")
    args = parser.parse_args()
    shape = "llama3-8b" if ON_GPU else "small"
    print(f"device {torch.cuda.get_device_name() if ON_GPU else 'cpu'}  torch {torch.__version__}  shape {shape}")
    torch.manual_seed(0)
    if ON_GPU or os.environ.get("TRITON_INTERPRET") == "1":
        from engines.own.kernels import triton_attention

        kernel_errors(triton_attention, shape)
    else:
        skipped("1. Triton kernel errors (or set TRITON_INTERPRET=1 to run them in the interpreter)")
    if ON_GPU and not args.skip_microbench:
        decode_microbench(triton_attention, shape)
    elif ON_GPU:
        print("\n== 2. decode attention microbenchmark: skipped (--skip-microbench) ==")
    else:
        skipped("2. decode attention microbenchmark")
    bandwidth = copy_bandwidth(1 << 30 if ON_GPU else 1 << 26)
    if args.kernels_only:
        return
    spec = ModelSpec(f"{shape}-random", None, dtype="bfloat16",
                     random_config=model_config(shape, args.layers, args.max_model_len))  # fmt: skip
    own = own_engine(spec, args)
    batch1_decode(own, args, bandwidth)
    offline_throughput(own, spec, args)


if __name__ == "__main__":
    main()
