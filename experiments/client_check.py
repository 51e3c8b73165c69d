"""Cross-check our serving measurements against NVIDIA's AIPerf, on the same OpenAI-compatible server.

Both clients load the server at the same rate, arrival process, request count, lengths and warm-up; then the
script prints TTFT, TPOT, ITL, E2EL and throughputs side by side. Needs a server already running (e.g.
`infermatrix-serve --model-dir DIR --port 8000`), the `openai` engine in this checkout, and AIPerf in its
own venv (`python3 -m venv ~/.cache/infermatrix/venvs/aiperf && .../bin/pip install aiperf`):

    python experiments/client_check.py --url http://127.0.0.1:8000 --rate 2 --num-requests 32 \
        --input-len 64 --output-len 16 --seed 0 [--model-dir DIR] [--same-schedule]

Names: AIPerf's `inter_token_latency` is per request (E2EL - TTFT) / (tokens - 1), i.e. our TPOT; its
`inter_chunk_latency` (gaps between streamed chunks) is our ITL between events. Prompts differ in content
(AIPerf synthesizes text of the given token length with the model's tokenizer, we send random token ids),
not in length. The two draw their Poisson/gamma schedules from different generators unless
`--same-schedule`, which hands AIPerf our exact schedule (seeded like the harness's first measured repeat)
as a mooncake trace replayed with `--fixed-schedule`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AIPERF_VENV = Path(os.environ.get("INFERMATRIX_CACHE", Path.home() / ".cache" / "infermatrix")) / "venvs" / "aiperf"

# (label, our metrics key, AIPerf metric, AIPerf stat)
ROWS = [
    ("TTFT mean ms", "ttft_ms.mean", "time_to_first_token", "avg"),
    ("TTFT p50 ms", "ttft_ms.p50", "time_to_first_token", "p50"),
    ("TTFT p99 ms", "ttft_ms.p99", "time_to_first_token", "p99"),
    ("TPOT mean ms", "tpot_ms.mean", "inter_token_latency", "avg"),
    ("ITL mean ms (between chunks)", "itl_ms.mean", "inter_chunk_latency", "avg"),
    ("ITL p50 ms", "itl_ms.p50", "inter_chunk_latency", "p50"),
    ("E2EL mean ms", "e2el_ms.mean", "request_latency", "avg"),
    ("E2EL p99 ms", "e2el_ms.p99", "request_latency", "p99"),
    ("output tok/s", "output_throughput_tok_s", "output_token_throughput", "avg"),
    ("requests/s", "request_throughput", "request_throughput", "avg"),
    ("requests measured", "num_requests", "request_count", "avg"),
]


def served_model(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models", timeout=10) as r:
        return json.loads(r.read())["data"][0]["id"]


def run_infermatrix(args: argparse.Namespace, out: Path) -> dict:
    """Our serving scenario through engine=openai; returns result.json's metrics."""
    cmd = [sys.executable, "-m", "harness.cli", "engine=openai", f"engine.base_url={args.url.rstrip('/')}/v1",
           "scenario=serving", f"scenario.request_rate={args.rate}", f"scenario.num_requests={args.num_requests}",
           f"scenario.arrival={args.arrival}", f"scenario.burstiness={args.burstiness}",
           f"scenario.warmup_requests={args.warmup_requests}", f"workload.input_len.mean={args.input_len}",
           f"workload.output_len.mean={args.output_len}", f"workload.seed={args.seed}", "tracker=none",
           "reuse=never", f"store={out / 'store'}", f"hydra.run.dir={out / 'infermatrix'}"]  # fmt: skip
    if args.model_dir:
        cmd += ["model.source=local", f"model.local_path={args.model_dir}"]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    result = json.loads((out / "infermatrix" / "result.json").read_text())
    if proc.returncode != 0 or result["status"] != "ok":
        sys.exit(f"infermatrix cell {result['status']}: {result.get('reason')}")
    return result["metrics"]


def schedule_trace(args: argparse.Namespace, path: Path) -> Path:
    """Our first measured repeat's schedule as a mooncake trace (timestamps in ms) for AIPerf's fixed schedule."""
    from harness.arrivals import arrival_offsets
    from harness.config import ArrivalProcess

    offsets = arrival_offsets(args.num_requests, args.rate, ArrivalProcess(args.arrival), args.burstiness,
                              args.seed, 0)  # fmt: skip
    lines = [json.dumps({"timestamp": int(round(o * 1e3)), "input_length": args.input_len,
                         "output_length": args.output_len}) for o in offsets]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def run_aiperf(args: argparse.Namespace, out: Path, tokenizer: str) -> dict:
    aiperf = AIPERF_VENV / "bin" / "aiperf"
    if not aiperf.is_file():
        sys.exit(f"AIPerf not found at {aiperf}: python3 -m venv {AIPERF_VENV} && {AIPERF_VENV}/bin/pip install aiperf")
    art = out / "aiperf"
    cmd = [str(aiperf), "profile", "--model", served_model(args.url), "--url", args.url.rstrip("/"),
           "--endpoint-type", "completions", "--streaming", "--tokenizer", tokenizer,
           "--extra-inputs", "ignore_eos:true", "--random-seed", str(args.seed), "--artifact-dir", str(art),
           "--ui-type", "none"]  # fmt: skip
    if args.same_schedule:
        trace = schedule_trace(args, out / "schedule.jsonl")
        cmd += ["--input-file", str(trace), "--custom-dataset-type", "mooncake_trace", "--fixed-schedule"]
    else:
        cmd += ["--request-count", str(args.num_requests), "--isl", str(args.input_len), "--isl-stddev", "0",
                "--osl", str(args.output_len), "--osl-stddev", "0", "--arrival-pattern", args.arrival]  # fmt: skip
        cmd += ["--request-rate", str(args.rate)] if math.isfinite(args.rate) else []
        cmd += ["--vllm-burstiness", str(args.burstiness)] if args.arrival == "gamma" else []
    if args.warmup_requests:
        cmd += ["--warmup-request-count", str(args.warmup_requests)]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"aiperf failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads((art / "profile_export_aiperf.json").read_text())


def ours(metrics: dict, key: str) -> float | None:
    name, _, stat = key.partition(".")
    value = metrics.get(name)
    value = value.get(stat) if stat and isinstance(value, dict) else value
    return None if value is None else float(value)


def theirs(report: dict, metric: str, stat: str) -> float | None:
    block = report.get(metric)
    if isinstance(block, dict):
        value = block.get(stat, block.get("avg"))
        return None if value is None else float(value)
    return None if block is None else float(block)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--url", required=True, help="the server's root, e.g. http://127.0.0.1:8000 (no /v1)")
    p.add_argument("--rate", type=float, default=2.0, help="requests/s (inf = all at once)")
    p.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson")
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--warmup-requests", type=int, default=0, help="sent first, not measured (both clients)")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", help="the served model's HF folder (tokenizer, vocabulary); default: embedded SmolLM2")
    p.add_argument("--same-schedule", action="store_true", help="replay our exact arrival schedule in AIPerf")
    p.add_argument("--out", default="client_check_out", help="folder for both clients' artifacts")
    args = p.parse_args()
    if args.same_schedule and args.warmup_requests:
        p.error("--same-schedule replays every request of the schedule; use --warmup-requests 0 with it")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = args.model_dir
    if tokenizer is None:
        from harness.models import embedded_model_dir

        tokenizer = str(embedded_model_dir())
    mine = run_infermatrix(args, out)
    report = run_aiperf(args, out, tokenizer)
    print(f"\nrate {args.rate:g} req/s ({args.arrival}), {args.num_requests} requests "
          f"({args.warmup_requests} warm-up), {args.input_len} in / {args.output_len} out, seed {args.seed}"
          + (", same schedule" if args.same_schedule else ""))  # fmt: skip
    width = max(len(r[0]) for r in ROWS)
    print(f"{'metric':<{width}}  {'infermatrix':>12}  {'AIPerf':>12}  {'ratio':>6}")
    for label, key, metric, stat in ROWS:
        a, b = ours(mine, key), theirs(report, metric, stat)
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        fa, fb = ("-" if v is None else f"{v:.2f}" for v in (a, b))
        print(f"{label:<{width}}  {fa:>12}  {fb:>12}  {ratio:>6}")


if __name__ == "__main__":
    main()
