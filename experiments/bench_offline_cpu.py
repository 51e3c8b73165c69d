"""Offline throughput on CPU: the own engine (its best technique set) vs HF transformers static batches.

Same seeded workload for both (default: 128 requests, prompt 64-512 tokens uniform, output 64-256 uniform,
ignore_eos). Prints throughput, the ratio, and the KV memory of paged vs contiguous caches for this
workload in one budget. Run on a machine as quiet as you can get it, e.g.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/bench_offline_cpu.py --threads 2
    .venv/bin/python experiments/bench_offline_cpu.py --requests 32   # scaled down
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines import create_engine  # noqa: E402
from engines.base import Attention, ModelSpec, Request, Technique  # noqa: E402
from engines.own.kv_pool import max_concurrent_sequences  # noqa: E402
from harness.config import LengthDist, Lengths, WorkloadConfig  # noqa: E402
from harness.models import embedded_model_dir  # noqa: E402
from harness.runner import vocabulary  # noqa: E402
from harness.workload import requests as make_requests  # noqa: E402
from harness.workload import synthesize  # noqa: E402


def workload(spec: ModelSpec, n: int, seed: int, prompt: tuple[int, int], output: tuple[int, int]) -> list[Request]:
    """The harness's own seeded synthetic workload (the `uniform` one), so numbers compare with sweeps."""
    cfg = WorkloadConfig(
        name="uniform", seed=seed, ignore_eos=True,
        input_len=Lengths(dist=LengthDist.uniform, low=prompt[0], high=prompt[1]),
        output_len=Lengths(dist=LengthDist.uniform, low=output[0], high=output[1]),
    )  # fmt: skip
    vocab_size, special = vocabulary(spec)
    built = synthesize(cfg, n, vocab_size, special, seed=0)
    print(f"workload hash {built.hash}")
    return make_requests(built, cfg, "r")


def run(name: str, engine, requests: list[Request]) -> dict:
    start = time.perf_counter()
    outputs = engine.generate(requests)
    elapsed = time.perf_counter() - start
    errors = [o.error for o in outputs if o.finish_reason == "error"]
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} requests failed, e.g. {errors[0]}")
    generated = sum(len(o.token_ids) for o in outputs)
    prompt = sum(o.prompt_len for o in outputs)
    print(f"{name:>4}: {elapsed:8.1f} s  {generated} generated tokens  {generated / elapsed:8.1f} output tok/s  "
          f"{(generated + prompt) / elapsed:8.1f} total tok/s", flush=True)  # fmt: skip
    return {"seconds": elapsed, "output_tps": generated / elapsed}


def kv_report(requests: list[Request], engine, budget_bytes: int) -> None:
    """Paged vs contiguous KV for this workload's final sequence lengths, in one budget."""
    bs, max_len, per_token = engine.options.block_size, engine.max_model_len, engine.kv_bytes_per_token
    lengths = [len(r.prompt_token_ids) + r.sampling.max_tokens for r in requests]
    real = sum(lengths) * per_token
    paged = sum(-(-n // bs) * bs for n in lengths) * per_token
    contiguous = len(lengths) * -(-max_len // bs) * bs * per_token
    blocks = budget_bytes // (per_token * bs)
    print(f"KV for all {len(lengths)} sequences at full length ({per_token} B/token, block {bs}, max_model_len {max_len}):")
    for name, allocated in (("paged", paged), ("contiguous", contiguous)):
        fits = max_concurrent_sequences(blocks, bs, lengths, name, max_len)
        print(f"  {name:>10}: {allocated / 2**20:9.1f} MiB allocated for {real / 2**20:.1f} MiB of tokens "
              f"(waste {100 * (1 - real / allocated):5.1f}%); concurrent sequences in {budget_bytes / 2**30:.2f} "
              f"GiB: {fits}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", type=int, nargs=2, default=(64, 512))
    parser.add_argument("--output", type=int, nargs=2, default=(64, 256))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--kv-gib", type=float, default=2.0)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default=None, help="own's technique.attention (default: the engine's)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}  threads={torch.get_num_threads()}  dtype={args.dtype}  "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}  cpus={os.cpu_count()}  "
          f"load avg={os.getloadavg()}")  # fmt: skip
    model_dir = str(embedded_model_dir())
    spec = ModelSpec("SmolLM2-135M-Instruct", model_dir, dtype=args.dtype)
    requests = workload(spec, args.requests, args.seed, tuple(args.prompt), tuple(args.output))
    print(f"workload: {len(requests)} requests, prompt {args.prompt[0]}-{args.prompt[1]}, "
          f"output {args.output[0]}-{args.output[1]} tokens, ignore_eos, seed {args.seed}")  # fmt: skip
    budget = int(args.kv_gib * 2**30)
    own_options = dict(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                kv_cache_bytes=budget)  # fmt: skip
    own_technique = Technique(attention=Attention(args.attention)) if args.attention else Technique()
    own = create_engine("own", spec, own_technique, own_options, "cpu")
    print(f"own technique: {own.technique}")
    own_result = run("own", own, requests)
    stats = own.stats()
    print(f"own stats: steps={stats['steps']} preemptions={stats['preemptions']} "
          f"peak_running={stats['peak_running_seqs']} kv_waste(time-weighted, paged)={stats['kv_waste_pct']:.1f}% "
          f"prefix_hit_rate={stats['prefix_cache_hit_rate']:.3f}")  # fmt: skip
    kv_report(requests, own, budget)
    if args.skip_hf:
        return
    own.close()
    hf = create_engine("hf", spec, Technique(), dict(batch_size=args.hf_batch_size), "cpu")
    print(f"hf technique: {hf.technique}  batch_size={args.hf_batch_size}")
    hf_result = run("hf", hf, requests)
    print(f"own / hf output throughput: {own_result['output_tps'] / hf_result['output_tps']:.2f}x")


if __name__ == "__main__":
    main()
