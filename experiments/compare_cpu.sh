#!/usr/bin/env bash
# own vs vLLM-CPU vs HF through the harness, the workloads of issue 11, engines interleaved (own, vllm, hf in
# each round; ROUNDS rounds), every cell in its own process with Student-t intervals and the load average:
#   offline        32 requests of the `uniform` mix (input 64-512, output 64-256), all engines at concurrency 32
#   shared_prefix  16 requests, 400 shared + 32 own input tokens, 32 output, prefix caching on where offered
#   batch1         1 request, 128 input / 128 output (median of repeats)
# each in float32 and bfloat16. vLLM runs eager (its torch.compile start-up costs about 4 minutes per cell).
# HF runs in the offline workload only (the issue's HF goal is offline throughput at equal concurrency).
#
#   flock /work/wt/bench.lock bash experiments/compare_cpu.sh [OUT_DIR] [ROUNDS]
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-reports/compare-cpu}")
rounds=${2:-2}
py=${PYTHON:-.venv/bin/python}
common=(tracker=none reuse=never "store=$out/store" threads=2 technique.graphs=eager scenario.warmup=1)
mkdir -p "$out"
echo "threads=2, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), code $(git rev-parse --short HEAD)" \
    | tee "$out/machine.txt"
for round in $(seq "$rounds"); do
    for dtype in float32 bfloat16; do
        for study in "offline own,vllm,hf scenario=throughput workload=uniform scenario.num_requests=32 scenario.repeats=2" \
                     "shared_prefix own,vllm scenario=throughput workload=shared_prefix scenario.num_requests=16 scenario.repeats=3" \
                     "batch1 own,vllm scenario=latency workload=fixed workload.output_len.mean=128 scenario.repeats=3"; do
            set -- $study
            name=$1 engines=$2
            shift 2
            echo "$(date -u +%T) round $round, $dtype, $name: $engines (load $(cut -d' ' -f1-3 /proc/loadavg))"
            "$py" -m harness.cli -m "engine=$engines" "model.dtype=$dtype" "${common[@]}" "$@" \
                "hydra.sweep.dir=$out/round$round/$dtype/$name" > "$out/round$round-$dtype-$name.log" 2>&1 \
                || echo "  (exit $?: see $out/round$round-$dtype-$name.log)"
        done
    done
done
"$py" experiments/compare_table.py "$out/store" | tee "$out/table.txt"
