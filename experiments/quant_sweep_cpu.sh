#!/usr/bin/env bash
# Every technique.quant value on the embedded SmolLM2, through the harness, on this CPU, in two passes:
#   quality: weight bytes, perplexity on a fixed GSM8K text, and a small MMLU (2 subjects x 5, 5-shot) / GSM8K
#            (first 3, 5-shot, 160 tokens) subset with the delta to the same engine's quant=none cell (one short latency run
#            each: its timing is not the speed result). Not a timing benchmark: runs without the lock.
#   speed:   batch-1 latency (128 in / 32 out, 3 repeats) and offline throughput (8 requests, 3 repeats), peak RSS,
#            each cell with its 95% interval and load average. A timing benchmark: run it under the lock.
#   bash experiments/quant_sweep_cpu.sh quality STORE DATA
#   flock /work/wt/bench.lock bash experiments/quant_sweep_cpu.sh speed STORE DATA
#   python experiments/quant_table.py STORE
# Engines that cannot honour a value record the cell as skipped, with the reason. Needs engines/hf/install_quant.sh
# (hf's quantization venv), llama-cpp-python, and for gptq/awq the checkpoints of
# `python -m engines.hf.quantize_checkpoint` (missing ones are skipped with the command to run).
set -uo pipefail
PASS="${1:?quality or speed}"
STORE="${2:-results/quant-sweep}"
DATA="${3:-../shared/data}"
PY="${PY:-python}"
HFQ="${HFQ:-$HOME/.cache/infermatrix/venvs/hf-quant/bin/python}"
export OMP_WAIT_POLICY=PASSIVE
COMMON=(tracker=none threads=1 model=smollm2-135m store="$STORE" reuse=never eval.data_dir="$DATA")
QUALITY=(scenario=latency scenario.warmup=0 scenario.repeats=1 workload=fixed workload.input_len.mean=16
         workload.output_len.mean=4 "eval=[mmlu,gsm8k]" "eval.mmlu.subjects=[high_school_geography,marketing]"
         eval.mmlu.limit=5 eval.gsm8k.limit=3 eval.gsm8k.max_gen_toks=160)
LATENCY=(scenario=latency scenario.warmup=1 scenario.repeats=3 workload=fixed workload.input_len.mean=128
         workload.output_len.mean=32)
OFFLINE=(scenario=throughput scenario.num_requests=8 scenario.warmup=1 scenario.repeats=3 workload=uniform
         workload.input_len.low=64 workload.input_len.high=192 workload.output_len.low=32 workload.output_len.high=48)
run() { echo "== $* (load $(cut -d' ' -f1-3 /proc/loadavg))"; "$PY" -m harness.cli -m "${COMMON[@]}" "$@"; }

cells() {  # $@: the scenario's overrides; $BASE: whether to add the accuracy baseline
    # accuracy delta: to the same engine's quant=none cell (llama.cpp has none: to own's float32 cell)
    base() { [ -n "${BASE:-}" ] && echo "+eval.baseline.where={engine:$1,technique.quant:none} eval.baseline.same=[$2]"; }
    run engine=own technique.quant=none,int8,int4 "$@" $(base own model,engine)
    run engine=own technique.quant=int4 technique.quant_group_size=32 "$@" $(base own model,engine)
    run engine=llamacpp technique.quant=gguf engine.gguf_type=null,Q8_0 "$@" $(base own model)
    run engine=hf engine.python="$HFQ" technique.quant=none,torchao_int8,int8,nf4,gptq,awq "$@" $(base hf model,engine)
}

if [ "$PASS" = quality ]; then
    BASE=1 cells "${QUALITY[@]}"
    # values these engines do not honour: recorded as skipped, with the reason
    run engine=own technique.quant=gptq,awq,nf4,torchao_int8,gguf scenario=latency
    run engine=hf technique.quant=int4,gguf scenario=latency
    run engine=llamacpp technique.quant=none,int8 scenario=latency
else
    cells "${LATENCY[@]}"
    cells "${OFFLINE[@]}"
fi
"$PY" experiments/quant_table.py "$STORE"
