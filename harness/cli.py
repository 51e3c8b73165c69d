"""The `infermatrix` command: a Hydra app that measures one cell per job (`-m` for sweeps)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import register

register()

# An absolute path: relative ones resolve against the Python package when run as a console script.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def job_dirs() -> tuple[Path, Path, str, int]:
    """(cell output dir, sweep dir, sweep id, job number) from Hydra's runtime config."""
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    sweep_dir = Path(hc.sweep.dir) if multirun else out_dir
    sweep_id = "_".join(sweep_dir.parts[-2:])  # <date>_<time> under Hydra's default dirs
    # slurm/sweep.sbatch runs each array task as a one-cell sweep (job 0): it passes the task's index
    job_num = int(os.environ.get("INFERMATRIX_JOB_NUM", hc.job.num)) if multirun else 0
    return out_dir, sweep_dir, sweep_id, job_num


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> None:
    import pandas as pd

    from harness.report import summarize
    from harness.runner import run_cell

    out_dir, sweep_dir, sweep_id, job_num = job_dirs()
    row = run_cell(cfg, out_dir, sweep_dir, sweep_id, job_num)
    print(summarize(pd.DataFrame([row])))
    if row["status"] == "failed":
        print(f"[infermatrix] cell failed: {row['reason']} (details: {row['result_path']})", file=sys.stderr)
    if HydraConfig.get().mode != RunMode.MULTIRUN and row["status"] == "failed":
        sys.exit(1)  # a single run reports failure; a sweep records it and goes on


def main() -> None:
    from harness.callbacks import FAILED_CELLS
    from harness.config import check_overrides
    from harness.trackers.secrets import refuse_secret_overrides

    # Before Hydra starts: it writes every override to .hydra/*.yaml before the task runs, and `+key=`
    # would add a misspelt key that the typed config then drops.
    try:
        refuse_secret_overrides(sys.argv[1:])
        check_overrides(sys.argv[1:])
    except ValueError as exc:
        print(f"[infermatrix] {exc}", file=sys.stderr)
        sys.exit(2)
    app()
    if FAILED_CELLS:  # every cell ran and was recorded; the status says not all of them succeeded
        print(f"[infermatrix] {len(FAILED_CELLS)} cell(s) failed: {', '.join(FAILED_CELLS)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
