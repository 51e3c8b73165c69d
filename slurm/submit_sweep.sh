#!/bin/bash
# Submit a cells file as one sweep.sbatch array plus the report job that runs when the array has ended:
#   slurm/submit_sweep.sh CELLS_FILE [sbatch options...] [-- overrides for every cell...]
#   slurm/submit_sweep.sh slurm/cells.example.txt --partition=cpu -- tracker.mode=offline
# Prints the array job id, the report job id and the sweep folder (multirun/slurm-<array id>, or
# INFERMATRIX_SWEEP_DIR). Every log lands in <sweep folder>/logs: the array is submitted held, its folder
# made, then released. `%8` caps the tasks running at once (INFERMATRIX_ARRAY_LIMIT). The report job
# gets no sbatch options but --partition and --account.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cells=${1:?usage: slurm/submit_sweep.sh CELLS_FILE [sbatch options...] [-- overrides...]}
shift
sbatch_opts=() report_opts=()
while (($#)) && [[ $1 != -- ]]; do
    sbatch_opts+=("$1")
    [[ $1 == --partition=* || $1 == --account=* ]] && report_opts+=("$1")
    shift
done
(($#)) && shift  # the --
n=$(grep -cvE '^[[:space:]]*(#|$)' "$cells")
((n > 0)) || { echo "submit_sweep: $cells has no cells" >&2; exit 2; }
sweep_pattern=${INFERMATRIX_SWEEP_DIR:-multirun/slurm-%A}  # sbatch fills in %A, the array job id
array=$(sbatch --parsable --hold --array=1-"$n"%"${INFERMATRIX_ARRAY_LIMIT:-8}" \
    --output="$sweep_pattern/logs/slurm-%a.out" "${sbatch_opts[@]}" "$here/sweep.sbatch" "$cells" "$@")
array=${array%%;*}
sweep_dir=${INFERMATRIX_SWEEP_DIR:-multirun/slurm-$array}
mkdir -p "$sweep_dir/logs"
scontrol release "$array"
report=$(sbatch --parsable --dependency=afterany:"$array" --output="$sweep_dir/logs/report-%j.out" \
    "${report_opts[@]}" "$here/report.sbatch" "$sweep_dir")
echo "array job $array ($n cells), report job ${report%%;*} (after the array), sweep folder $sweep_dir"
