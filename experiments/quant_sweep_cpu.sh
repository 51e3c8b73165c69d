#!/usr/bin/env bash
# Every technique.quant value on the embedded SmolLM2, through the harness, on this CPU: weight memory, peak RSS,
# batch-1 latency (128 in / 32 out), offline throughput (16 requests), perplexity on a fixed GSM8K text, and a small
# MMLU (2 subjects x 10, 5-shot) / GSM8K (first 5, 5-shot) subset with the delta to the same engine's quant=none.
# Engines that cannot honour a value record the cell as skipped, with the reason. Run under the benchmark lock:
#   flock /work/wt/bench.lock bash experiments/quant_sweep_cpu.sh [STORE] [DATA]
# Needs: engines/hf/install_quant.sh (hf's quantization venv), engines/llamacpp/install.sh, and for gptq/awq the
# checkpoints of `python -m engines.hf.quantize_checkpoint` (missing ones are skipped with the command to run).
set -uo pipefail
STORE="${1:-results/quant-sweep}"
DATA="${2:-../shared/data}"
PY="${PY:-python}"
HFQ="${HFQ:-$HOME/.cache/infermatrix/venvs/hf-quant/bin/python}"
export OMP_WAIT_POLICY=PASSIVE
COMMON=(tracker=none threads=1 model=smollm2-135m store="$STORE" reuse=never eval.data_dir="$DATA")
LAT=(scenario=latency scenario.warmup=1 scenario.repeats=3 workload=fixed workload.input_len.mean=128
     workload.output_len.mean=32 "eval=[mmlu,gsm8k]" "eval.mmlu.subjects=[high_school_geography,marketing]"
     eval.mmlu.limit=10 eval.gsm8k.limit=5)
OFF=(scenario=throughput scenario.num_requests=16 scenario.warmup=1 scenario.repeats=3 workload=uniform
     workload.input_len.low=64 workload.input_len.high=256 workload.output_len.low=32 workload.output_len.high=64)
run() { echo "== $* (load $(cut -d' ' -f1-3 /proc/loadavg))"; "$PY" -m harness.cli -m "${COMMON[@]}" "$@"; }

for scenario in LAT OFF; do
    declare -n S=$scenario
    # accuracy delta: to the same engine's quant=none cell (llama.cpp has none: to own's float32 cell)
    where() { [ "$scenario" = LAT ] && echo "+eval.baseline.where={engine:$1,technique.quant:none} eval.baseline.same=[$2]"; }
    run engine=own technique.quant=none,int8,int4 "${S[@]}" $(where own model,engine)
    run engine=own technique.quant=int4 technique.quant_group_size=32 "${S[@]}" $(where own model,engine)
    run engine=hf engine.python="$HFQ" technique.quant=none,torchao_int8,int8,nf4 "${S[@]}" $(where hf model,engine)
    run engine=llamacpp technique.quant=gguf "${S[@]}" $(where own model)
    run engine=llamacpp technique.quant=gguf engine.gguf_type=Q8_0 "${S[@]}" $(where own model)
    # last: the GPTQ/AWQ checkpoints may still be in the making when a sweep starts (missing ones are skipped)
    run engine=hf engine.python="$HFQ" technique.quant=gptq,awq "${S[@]}" $(where hf model,engine)
done
# values these engines do not honour: recorded as skipped, with the reason
run engine=own technique.quant=gptq,awq,nf4,torchao_int8,gguf scenario=latency
run engine=hf technique.quant=int4,gguf scenario=latency
run engine=llamacpp technique.quant=none,int8 scenario=latency
"$PY" experiments/quant_table.py "$STORE"
