#!/usr/bin/env bash
# The CPU studies behind reports/: each experiment (conf/experiment/) swept in rounds (every cell once per
# round, so the cells compared alternate over time as A B A B), each sweep under the shared benchmark
# lock; the rounds' results tables go to reports/<name>/results.jsonl and its report is built from that;
# then the claims table over every study.
# Usage: [ROUNDS="1 2"] [REPORT_ONLY=1] bash experiments/studies_cpu.sh [OUT] [NAME...]
# (OUT: where the sweeps write, default /tmp/infermatrix-studies; NAME: the experiments, default the five below).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/infermatrix-studies}; shift || true
PY=${PYTHON:-.venv/bin/python}
LOCK=${BENCH_LOCK:-/work/wt/bench.lock}
ROUNDS=${ROUNDS:-1 2}
declare -A EXTRA=(
  # CPU-sized: the interpreted Triton kernels would take hours; flash_attn stays (its skipped cell says why)
  [attention]="technique.attention=torch,sdpa,flash_attn"
  # CPU-sized request counts and lengths (the experiments' own sizes suit a GPU better)
  [batching]="scenario.num_requests=16 workload.input_len.low=32 workload.input_len.high=64 workload.output_len.high=128"
  [prefix_cache]="scenario.num_requests=8"
)
NAMES=("$@"); [ ${#NAMES[@]} -gt 0 ] || NAMES=(kv_cache paged_kv batching prefix_cache attention batch_size)
for name in "${NAMES[@]}"; do
  measure="infermatrix -m +experiment=$name ${EXTRA[$name]:-} reuse=never"
  if [ -z "${REPORT_ONLY:-}" ]; then
    for round in $ROUNDS; do
      echo "== $name round $round: $measure  (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
      # shellcheck disable=SC2086
      flock "$LOCK" "$PY" -m harness.cli -m +experiment="$name" ${EXTRA[$name]:-} reuse=never \
        hydra.sweep.dir="$OUT/$name/round-$round" store="$OUT/store" || echo "(some cells of $name failed: see the table)"
    done
    mkdir -p "reports/$name"
    cat "$OUT/$name"/round-*/results.jsonl > "reports/$name/results.jsonl"
  fi
  "$PY" -m harness.cli report "reports/$name/results.jsonl" --out "reports/$name" --title "Study: $name (CPU)" \
    --note "Measured by: $measure (rounds: $ROUNDS; a round sweeps every cell once), via experiments/studies_cpu.sh under flock."
done
tables=(reports/*/results.jsonl)
"$PY" -m harness.cli report "${tables[@]}" --out reports/claims --title "Claims so far (CPU studies)" --all-claims \
  --note "The claims of every experiment in conf/experiment/, against every study in reports/."
