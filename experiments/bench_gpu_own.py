"""GPU benchmark of our engine (engines/own) on a Llama-3-8B-shaped model with random bf16 weights.

Needs a CUDA device (exits with an error otherwise: nothing is simulated). Prints, in order:
  1. Triton kernels vs the torch reference: max abs error (decode, prefill over a cached prefix, store_kv)
  2. decode-attention microbenchmark: Triton vs reference vs SDPA over dense K/V, per batch x context
  3. device-to-device copy bandwidth (the yardstick for 4)
  4. batch-1 decode tok/s, eager vs cuda_graphs, and memory-bandwidth utilisation =
     (weight + KV bytes read per token) x tok/s / copy bandwidth
  5. offline throughput: own engine vs HF transformers on the same random-weight shape

    python experiments/bench_gpu_own.py            # everything (loads the 16 GB model 4 times)
    python experiments/bench_gpu_own.py --layers 4 --skip-hf   # quick smoke run
"""

from __future__ import annotations

import argparse
import gc
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

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16  # Llama-3-8B attention shape


def llama3_8b_config(layers: int, max_len: int) -> dict:
    return {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": max_len, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
    }  # fmt: skip


def cuda_ms(fn, iters: int = 30, warmup: int = 3) -> float:
    """Median milliseconds of `fn()` over `iters` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def random_paged(batch: int, context: int, dtype: torch.dtype, gen: torch.Generator):
    """A cache holding `batch` sequences of `context` tokens in shuffled blocks, and their block tables."""
    width = -(-context // BLOCK)
    num_blocks = batch * width
    shape = (num_blocks, BLOCK, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, generator=gen, device="cuda").to(dtype)
    v_cache = torch.randn(shape, generator=gen, device="cuda").to(dtype)
    tables = torch.randperm(num_blocks, generator=gen, device="cuda").to(torch.int32).view(batch, width)
    return k_cache, v_cache, tables


def kernel_errors(triton_kernels) -> None:
    print("\n== 1. Triton kernels vs torch reference (max abs error) ==")
    gen = torch.Generator(device="cuda").manual_seed(0)
    lens = torch.tensor([1, 100, 1000, 3001], dtype=torch.int32, device="cuda")
    q_lens = torch.tensor([1, 37, 200, 513], dtype=torch.int32, device="cuda")
    cu = F.pad(q_lens.cumsum(0), (1, 0)).to(torch.int32)
    scale = HEAD_DIM**-0.5
    for dtype in (torch.float32, torch.bfloat16):
        k_cache, v_cache, tables = random_paged(4, 3001, dtype, gen)
        q = torch.randn(4, HEADS, HEAD_DIM, generator=gen, device="cuda").to(dtype)
        decode = [f(q, k_cache, v_cache, tables, lens, scale) for f in (
            reference.paged_decode_attention, triton_kernels.paged_decode_attention)]  # fmt: skip
        q = torch.randn(int(q_lens.sum()), HEADS, HEAD_DIM, generator=gen, device="cuda").to(dtype)
        prefill = [f(q, k_cache, v_cache, tables, cu, lens, scale) for f in (
            reference.paged_prefill_attention, triton_kernels.paged_prefill_attention)]  # fmt: skip
        k, v = (torch.randn(64, KV_HEADS, HEAD_DIM, generator=gen, device="cuda").to(dtype) for _ in range(2))
        slots = torch.randperm(k_cache.shape[0] * BLOCK, generator=gen, device="cuda")[:64]
        slots[::7] = -1
        caches = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
        reference.store_kv(k, v, *caches[0], slots)
        triton_kernels.store_kv(k, v, *caches[1], slots)
        store_err = max((a - b).abs().max().item() for a, b in zip(caches[0], caches[1]))
        print(f"{str(dtype):15s} decode {(decode[0] - decode[1]).abs().max().item():.3e}   "
              f"prefill {(prefill[0] - prefill[1]).abs().max().item():.3e}   store_kv {store_err:.3e}")  # fmt: skip


def sdpa_decode(q, keys, values, scale):
    try:
        return F.scaled_dot_product_attention(q, keys, values, scale=scale, enable_gqa=True)
    except TypeError:  # torch < 2.5: no enable_gqa
        group = q.shape[1] // keys.shape[1]
        return F.scaled_dot_product_attention(
            q, keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1), scale=scale
        )


def decode_microbench(triton_kernels) -> None:
    print("\n== 2. decode attention, bf16, 32 q heads / 8 kv heads / head_dim 128 (median ms) ==")
    print(f"{'batch':>5} {'context':>7} {'triton':>9} {'reference':>10} {'sdpa dense':>10} {'triton GB/s':>11}")
    gen = torch.Generator(device="cuda").manual_seed(1)
    scale = HEAD_DIM**-0.5
    for batch in (1, 8, 32, 64):
        for context in (512, 2048, 8192):
            k_cache, v_cache, tables = random_paged(batch, context, torch.bfloat16, gen)
            lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
            q = torch.randn(batch, HEADS, HEAD_DIM, generator=gen, device="cuda").to(torch.bfloat16)
            args = (q, k_cache, v_cache, tables, lens, scale)
            t_triton = cuda_ms(lambda: triton_kernels.paged_decode_attention(*args))
            t_ref = cuda_ms(lambda: reference.paged_decode_attention(*args), iters=10)
            # SDPA gets K/V already contiguous per sequence (no paging): a dense baseline.
            dense_k = k_cache[tables.long()].reshape(batch, -1, KV_HEADS, HEAD_DIM).transpose(1, 2).contiguous()
            dense_v = v_cache[tables.long()].reshape(batch, -1, KV_HEADS, HEAD_DIM).transpose(1, 2).contiguous()
            q4 = q[:, :, None, :]
            t_sdpa = cuda_ms(lambda: sdpa_decode(q4, dense_k, dense_v, scale))
            kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * 2
            print(f"{batch:5d} {context:7d} {t_triton:9.3f} {t_ref:10.3f} {t_sdpa:10.3f} "
                  f"{kv_bytes / t_triton / 1e6:11.1f}")  # fmt: skip
            del k_cache, v_cache, dense_k, dense_v
            torch.cuda.empty_cache()


def copy_bandwidth() -> float:
    """Bytes per second moved (read + write) by a 1 GiB device-to-device copy."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), iters=20)
    bandwidth = 2 * src.numel() / (ms / 1e3)
    print(f"\n== 3. device copy bandwidth ==\n1 GiB copy: {ms:.3f} ms -> {bandwidth / 1e9:.1f} GB/s (read + write)")
    del src, dst
    torch.cuda.empty_cache()
    return bandwidth


def free(engine) -> None:
    engine.close()
    del engine
    gc.collect()
    torch.cuda.empty_cache()


def random_requests(count: int, prompt_len: int, gen_len: int, vocab: int, seed: int) -> list[Request]:
    gen = torch.Generator().manual_seed(seed)
    sampling = SamplingParams(max_tokens=gen_len, ignore_eos=True)
    return [
        Request(f"r{i}", torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(), sampling)
        for i in range(count)
    ]


def batch1_decode(spec: ModelSpec, args, bandwidth: float) -> None:
    print(f"\n== 4. batch-1 decode, {args.layers} layers, prompt {args.prompt_len}, {args.decode_tokens} tokens ==")
    config = spec.random_config
    request = random_requests(1, args.prompt_len, args.decode_tokens, config["vocab_size"], seed=2)
    for graphs in (Graphs.eager, Graphs.cuda_graphs):
        technique = Technique(attention=Attention.triton, graphs=graphs)
        started = time.perf_counter()
        engine = create_engine("own", spec, technique, dict(max_num_seqs=args.num_requests), "cuda")
        load_s = time.perf_counter() - started
        engine.generate(random_requests(1, 16, 8, config["vocab_size"], seed=3))  # compile kernels
        out = engine.generate(request)[0]
        decode_s = out.token_times[-1] - out.token_times[0]
        tok_s = (len(out.token_ids) - 1) / decode_s
        params = dict(engine.model.named_parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
        weight_bytes -= params["embed"].numel() * params["embed"].element_size()  # one row per token is read
        mean_context = args.prompt_len + args.decode_tokens / 2
        kv_bytes = mean_context * engine.kv_bytes_per_token
        used = (weight_bytes + kv_bytes) * tok_s / bandwidth
        print(f"{graphs.value:12s} {tok_s:8.1f} tok/s  ({1e3 / tok_s:.2f} ms/token; load+setup {load_s:.0f} s)  "
              f"bytes/token {weight_bytes / 1e9:.2f} GB weights + {kv_bytes / 1e6:.1f} MB KV  "
              f"-> {100 * used:.1f}% of copy bandwidth")  # fmt: skip
        free(engine)


def offline_throughput(spec: ModelSpec, args) -> None:
    print(f"\n== 5. offline throughput: {args.num_requests} requests x prompt {args.prompt_len} + "
          f"{args.gen_len} generated tokens ==")  # fmt: skip
    requests = random_requests(args.num_requests, args.prompt_len, args.gen_len, spec.random_config["vocab_size"], 4)
    runs = [("own triton+cuda_graphs", "own", Technique(attention=Attention.triton, graphs=Graphs.cuda_graphs))]
    if not args.skip_hf:
        runs.append(("hf transformers", "hf", Technique()))
    for label, name, technique in runs:
        options = dict(max_num_seqs=args.num_requests, max_num_batched_tokens=8192)
        engine = create_engine(name, spec, technique, options, "cuda")
        engine.generate(random_requests(2, 16, 4, spec.random_config["vocab_size"], seed=5))  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        outputs = engine.generate(requests)
        wall = time.perf_counter() - started
        generated = sum(len(o.token_ids) for o in outputs)
        errors = [o.error for o in outputs if o.finish_reason == "error"]
        print(f"{label:24s} {generated / wall:9.1f} generated tok/s  "
              f"({(generated + args.num_requests * args.prompt_len) / wall:.1f} total tok/s, {wall:.1f} s)"
              + (f"  ERRORS: {errors[:2]}" if errors else ""))  # fmt: skip
        free(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (Llama-3-8B has 32)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--decode-tokens", type=int, default=256, help="tokens generated in the batch-1 run")
    parser.add_argument("--gen-len", type=int, default=128, help="tokens generated per request, offline run")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF transformers baseline")
    parser.add_argument("--kernels-only", action="store_true", help="sections 1-3 only (no model)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_own.py needs a CUDA GPU and found none: nothing was measured.")
    import triton

    from engines.own.kernels import triton_attention

    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    torch.manual_seed(0)
    kernel_errors(triton_attention)
    decode_microbench(triton_attention)
    bandwidth = copy_bandwidth()
    if args.kernels_only:
        return
    spec = ModelSpec("llama3-8b-shape-random", None, dtype="bfloat16",
                     random_config=llama3_8b_config(args.layers, args.max_model_len))  # fmt: skip
    batch1_decode(spec, args, bandwidth)
    offline_throughput(spec, args)


if __name__ == "__main__":
    main()
