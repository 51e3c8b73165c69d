#!/usr/bin/env bash
# The CPU studies behind reports/: each experiment (conf/experiment/) swept under the shared benchmark lock,
# its results table copied to reports/<name>/results.jsonl, then its report built from that copy.
# Usage: bash experiments/studies_cpu.sh [OUT] [NAME...]   (OUT default /tmp/infermatrix-studies)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/infermatrix-studies}; shift || true
PY=${PYTHON:-.venv/bin/python}
LOCK=${BENCH_LOCK:-/work/wt/bench.lock}
declare -A EXTRA=(
  # CPU-sized variants: the interpreted Triton kernels would take hours; flash_attn stays (a skipped cell says why)
  [attention]="technique.attention=torch,sdpa,flash_attn"
)
NAMES=("$@"); [ ${#NAMES[@]} -gt 0 ] || NAMES=(kv_cache paged_kv batching prefix_cache attention)
for name in "${NAMES[@]}"; do
  echo "== $name  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  # shellcheck disable=SC2086
  flock "$LOCK" "$PY" -m harness.cli -m +experiment="$name" ${EXTRA[$name]:-} \
    hydra.sweep.dir="$OUT/$name" store="$OUT/store" || echo "(some cells of $name failed: see the table)"
  mkdir -p "reports/$name"
  cp "$OUT/$name/results.jsonl" "reports/$name/results.jsonl"
done
