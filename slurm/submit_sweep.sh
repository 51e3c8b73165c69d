#!/bin/bash
# Submit a cells file as one sweep.sbatch array plus the report job that runs when the array has ended:
#   slurm/submit_sweep.sh CELLS_FILE [sbatch options...] [-- overrides for every cell...]
#   slurm/submit_sweep.sh slurm/cells.example.txt --partition=cpu -- tracker.mode=offline
# Prints the array job id, the report job id and the sweep folder. `%8` caps the tasks running at once
# (INFERMATRIX_ARRAY_LIMIT). The report job gets no sbatch options but --partition and --account.
set -euo pipefail
cd "$(dirname "$0")/.."
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
array=$(sbatch --parsable --array=1-"$n"%"${INFERMATRIX_ARRAY_LIMIT:-8}" "${sbatch_opts[@]}" slurm/sweep.sbatch "$cells" "$@")
array=${array%%;*}
sweep_dir=${INFERMATRIX_SWEEP_DIR:-multirun/slurm-$array}
report=$(sbatch --parsable --dependency=afterany:"$array" "${report_opts[@]}" slurm/report.sbatch "$sweep_dir")
echo "array job $array ($n cells), report job ${report%%;*} (after the array), sweep folder $sweep_dir"
