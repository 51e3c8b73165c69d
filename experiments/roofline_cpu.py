"""The fastest any engine could run issue 11's CPU workloads here, with the arithmetic engine=own does.

Measures this machine (threads as given): matmul throughput through own's own linear layer (our C++
tile-packed kernel where the CPU has AVX-512 or AVX2 + FMA; else oneDNN-packed weights) on the embedded model's
four layer shapes, at 2048 rows (a prefill step) and 32 rows (a batch-32 decode step), and read bandwidth over
1 GiB. Then, for each workload of experiments/compare_cpu.sh, a floor:
  prefill  (prompt tokens, a shared prefix once) x linear FLOPs at the 2048-row rate, plus causal attention
           FLOPs at that rate
  decode   every request decoding from the start, each step the larger of its linear FLOPs at the 32-row rate
           and one read of the weights, plus one read of each sequence's KV
Every term is optimistic (perfect overlap, no sampling, no Python), so an engine that needs more time than a
floor allows cannot get there without changing the arithmetic. With --compare (compare_cpu.sh's results),
each workload also shows what each engine measured there, as a share of the ceiling, and where issue 11's
goals (1.2x vLLM, 5x HF) fall.

    .venv/bin/python experiments/roofline_cpu.py --threads 2 --compare reports/compare-cpu/3f503bc/results.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines.base import ModelSpec  # noqa: E402
from engines.own.architecture import ModelConfig  # noqa: E402
from engines.own.loader import load_model  # noqa: E402
from engines.own.quant.linear import cpu_packed_linear  # noqa: E402
from harness.config import LengthDist, Lengths, WorkloadConfig  # noqa: E402
from harness.models import embedded_model_dir  # noqa: E402
from harness.runner import vocabulary  # noqa: E402
from harness.workload import synthesize  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from compare_table import WORKLOADS as STORE_WORKLOADS  # noqa: E402  (results' workload names -> study names)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
WORKLOADS = {  # compare_cpu.sh's studies: (requests, input, output, shared prefix)
    "offline": (32, Lengths(dist=LengthDist.uniform, low=64, high=512), Lengths(dist=LengthDist.uniform, low=64, high=256), 0),
    "shared_prefix": (16, Lengths(dist=LengthDist.fixed, mean=32), Lengths(dist=LengthDist.fixed, mean=32), 400),
    "batch1": (1, Lengths(dist=LengthDist.fixed, mean=128), Lengths(dist=LengthDist.fixed, mean=128), 0),
}  # fmt: skip
GOALS = {"vllm": 1.2, "hf": 5.0}  # issue 11: own >= 1.2x vLLM-CPU and >= 5x HF


def layer_shapes(c: ModelConfig) -> list[tuple[int, int]]:
    """(out, in) of one decoder layer's fused linears: q|k|v, o, gate|up, down."""
    qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    return [(qkv, c.hidden_size), (c.hidden_size, c.num_heads * c.head_dim),
            (2 * c.intermediate_size, c.hidden_size), (c.hidden_size, c.intermediate_size)]  # fmt: skip


def matmul_rate(c: ModelConfig, dtype: torch.dtype, rows: int) -> float:
    """FLOP/s of one layer's linears at `rows` rows (best of 5), through the packed linear own runs."""
    layers = [cpu_packed_linear(torch.randn(n, k, dtype=dtype), None, 64)[0] for n, k in layer_shapes(c)]
    inputs = [torch.randn(rows, k, dtype=dtype) for _, k in layer_shapes(c)]
    flops = sum(2 * rows * n * k for n, k in layer_shapes(c))
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(3 if rows > 256 else 30):
                for layer, x in zip(layers, inputs):
                    layer(x)
            best = min(best, (time.perf_counter() - start) / (3 if rows > 256 else 30))
    return flops / best


def read_bandwidth() -> float:
    """Bytes/s of summing 1 GiB of float32 (best of 5)."""
    data = torch.ones(2**28)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best


def lengths(spec: ModelSpec, name: str) -> tuple[list[int], list[int], int]:
    """Prompt and output lengths of the harness's seeded workload, and its shared prefix."""
    n, input_len, output_len, shared = WORKLOADS[name]
    cfg = WorkloadConfig(name=name, seed=0, ignore_eos=True, input_len=input_len, output_len=output_len,
                         shared_prefix_len=shared)  # fmt: skip
    built = synthesize(cfg, n, *vocabulary(spec), seed=0)
    return [len(p) for p in built.prompts], list(built.output_lens), shared


def floor(c: ModelConfig, dtype: torch.dtype, prompts: list[int], outputs: list[int], shared: int,
          rate: dict[int, float], bandwidth: float) -> dict[str, float]:  # fmt: skip
    """Seconds for each part of the workload at the measured rates."""
    size = torch.empty((), dtype=dtype).element_size()
    body = sum(n * k for n, k in layer_shapes(c)) * c.num_layers
    head = c.vocab_size * c.hidden_size
    per_pair = 4 * c.num_heads * c.head_dim * c.num_layers  # q.k and p.v, every layer
    kv_per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * size
    computed = sum(prompts) - shared * (len(prompts) - 1)  # the prefix cache computes a shared prefix once
    pairs = sum(p * (p + 1) // 2 for p in prompts) - (len(prompts) - 1) * shared * (shared + 1) // 2
    parts = {"prefill linears": (2 * body * computed + 2 * head * len(prompts)) / rate[2048],
             "prefill attention": pairs * per_pair / rate[2048], "decode linears": 0.0, "decode KV reads": 0.0}
    for step in range(1, max(outputs)):  # the first token of each request comes from its prefill
        live = [i for i, out in enumerate(outputs) if out > step]
        parts["decode linears"] += max(2 * (body + head) * len(live) / rate[32], (body + head) * size / bandwidth)
        parts["decode KV reads"] += sum(prompts[i] + step for i in live) * kv_per_token / bandwidth
    return parts


def measured(paths: list[str]) -> dict[tuple[str, str, str, str], list[float]]:
    """(engine, workload, dtype, code version) -> output tok/s of each compare_cpu.sh round."""
    from harness.record import flatten, read_rows

    found: dict[tuple[str, str, str, str], list[float]] = {}
    for path in paths:
        for row in map(flatten, read_rows(Path(path))):
            if row.get("status") == "ok" and row.get("output_throughput_tok_s") is not None:
                workload = STORE_WORKLOADS.get(row["workload"], row["workload"])
                code = str(row.get("code_version", "")).rsplit("+", 1)[-1][:7]
                key = (row["engine"], workload, row.get("model_dtype"), code)
                found.setdefault(key, []).append(row["output_throughput_tok_s"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--compare", nargs="*", default=[], help="compare_cpu.sh results.jsonl files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = ModelSpec("SmolLM2-135M-Instruct", str(embedded_model_dir()))
    c = load_model(spec, torch.device("cpu"))[0].config
    bandwidth = read_bandwidth()
    runs = measured(args.compare)
    print(f"threads {torch.get_num_threads()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f}; "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s")  # fmt: skip
    for name in args.dtype:
        dtype = DTYPES[name]
        rate = {rows: matmul_rate(c, dtype, rows) for rows in (2048, 32)}
        print(f"\n{name}: linears {rate[2048] / 1e9:.0f} GFLOP/s at 2048 rows, {rate[32] / 1e9:.0f} at 32 rows")
        for workload in WORKLOADS:
            prompts, outputs, shared = lengths(spec, workload)
            parts = floor(c, dtype, prompts, outputs, shared, rate, bandwidth)
            ceiling = sum(outputs) / sum(parts.values())
            print(f"  {workload}: floor {sum(parts.values()):.2f} s = "
                  + " + ".join(f"{k} {v:.2f}" for k, v in parts.items())
                  + f"; ceiling {ceiling:.1f} output tok/s")  # fmt: skip
            for engine, _, _, code in sorted(k for k in runs if k[1:3] == (workload, name)):
                tps = runs[(engine, workload, name, code)]
                mean = statistics.mean(tps)
                goal = ""
                if engine in GOALS:
                    wanted = GOALS[engine] * mean
                    goal = f"; {GOALS[engine]}x of it = {wanted:.1f} = {100 * wanted / ceiling:.0f}% of the ceiling"
                print(f"    {engine:>4} at {code}: {', '.join(f'{x:.1f}' for x in tps)} tok/s, mean {mean:.1f} = "
                      f"{100 * mean / ceiling:.0f}% of the ceiling{goal}")  # fmt: skip

if __name__ == "__main__":
    main()
