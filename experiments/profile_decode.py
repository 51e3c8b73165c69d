"""Profile one engine=own decode step: batch B decode on the embedded SmolLM2, the top torch ops by self time.

Fills B sequences (prompt P tokens each) to steady decode, then times S decode steps plainly and once more
under torch.profiler; prints ms per step, torch ops per step and the top ops table. Run it under the bench
lock so numbers do not overlap other benchmarks:

    flock /work/wt/bench.lock .venv/bin/python experiments/profile_decode.py --dtype float32 bfloat16 \
        --attention sdpa cpp
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
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from engines import create_engine  # noqa: E402
from engines.base import Attention, ModelSpec, Request, SamplingParams, Technique  # noqa: E402
from harness.models import embedded_model_dir  # noqa: E402


def decode_ready_engine(dtype: str, attention: str | None, pack: bool, batch: int, prompt: int, device: str,
                        layer_ops: bool = True):  # fmt: skip
    spec = ModelSpec("SmolLM2-135M-Instruct", str(embedded_model_dir()), dtype=dtype)
    technique = Technique(attention=Attention(attention) if attention else None)
    engine = create_engine("own", spec, technique, dict(max_num_seqs=batch, kv_cache_bytes=2**30, pack_weights=pack,
                                                                 cpp_layer_ops=layer_ops),
                           device)  # fmt: skip
    sampling = SamplingParams(max_tokens=10_000, ignore_eos=True)
    for i in range(batch):
        ids = [(i * 131 + j * 7) % 40_000 + 100 for j in range(prompt + i)]  # distinct lengths, like a real mix
        engine.llm.add_request(Request(f"r{i}", ids, sampling))
    while any(s.num_computed_tokens < s.prompt_len for s in engine.llm.scheduler.running) or \
            engine.llm.scheduler.waiting:  # fmt: skip
        engine.llm.step()
    return engine


def _inside_aten(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def profile_dtype(dtype: str, attention: str | None, pack: bool, layer_ops: bool, batch: int, prompt: int, steps: int,
                  rows: int, device: str) -> None:  # fmt: skip
    engine = decode_ready_engine(dtype, attention, pack, batch, prompt, device, layer_ops)
    llm = engine.llm
    for _ in range(3):
        llm.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        llm.step()
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            llm.step()
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    # top level: aten ops not called from inside another aten op (what Python code dispatches)
    top = sum(1 for e in prof.events() if e.name.startswith("aten::") and not _inside_aten(e))
    print(f"\n=== dtype={dtype} batch={batch} decode, context {prompt}-{prompt + batch} tokens, "
          f"threads={torch.get_num_threads()} load avg={os.getloadavg()} technique={engine.technique} "
          f"weights={engine.weight_layout} layer_ops={engine.layer_ops}")  # fmt: skip
    print(f"step time (unprofiled, {steps} steps): median {1e3 * statistics.median(times):.1f} ms, "
          f"min {1e3 * min(times):.1f} ms -> {batch / statistics.median(times):.0f} tok/s")  # fmt: skip
    print(f"aten ops per step: {top / steps:.0f} top-level, {ops / steps:.0f} at all levels")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attention", nargs="+", default=[None], help="backends to profile in turn (default: own's)")
    parser.add_argument("--pack-weights", nargs="+", choices=["on", "off"], default=["on"],
                        help="engine.pack_weights values to profile in turn")
    parser.add_argument("--layer-ops", nargs="+", choices=["cpp", "torch"], default=["cpp"],
                        help="engine.cpp_layer_ops on (cpp) or off (torch), in turn")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for dtype in args.dtype:
        for attention in args.attention:
            for pack in args.pack_weights:
                for ops in args.layer_ops:
                    profile_dtype(dtype, attention, pack == "on", ops == "cpp", args.batch, args.prompt, args.steps,
                                  args.rows, args.device)  # fmt: skip


if __name__ == "__main__":
    main()
