"""SLURM launch files: the submitit launcher config composes, and sweep.sbatch runs its task's cell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from harness.config import Config, register
from harness.report import load_results
from slurm_cluster import needs_slurm

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "slurm" / "sweep.sbatch"


def test_the_slurm_launcher_composes_into_submitit_settings():
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)  # fmt: skip
        HydraConfig.instance().set_config(cfg)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)

    assert launcher["_target_"] == "hydra_plugins.infermatrix_launcher.slurm_launcher.SlurmLauncher"
    # the request comes from the default hardware option (cpu: no GPU, what a small node has)
    assert (launcher["partition"], launcher["cpus_per_task"], launcher["gpus_per_node"]) == ("gpu", 2, 0)
    assert launcher["max_num_timeout"] >= 1 and launcher["additional_parameters"] == {"requeue": True}
    # the plugin resolves setup lines a second time: one holding "${" would fail there
    [setup] = launcher["setup"]
    assert setup == 'if [ -n "$SLURM_CPUS_PER_TASK" ]; then export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi'


@pytest.fixture
def fake_infermatrix(tmp_path) -> Path:
    """An `infermatrix` on PATH that prints its arguments, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "infermatrix"
    script.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\necho "OMP_NUM_THREADS=$OMP_NUM_THREADS"\n'
                      'echo "INFERMATRIX_JOB_NUM=$INFERMATRIX_JOB_NUM"\n')
    script.chmod(0o755)
    return bin_dir


def run_task(cells: Path, task: int, bin_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_NUM_THREADS"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_JOB_ID="4242",
               SLURM_CPUS_PER_TASK="6")  # fmt: skip
    return subprocess.run(["bash", str(SBATCH), str(cells), *extra], env=env, capture_output=True, text=True,
                          cwd=cells.parent)  # fmt: skip


def test_each_array_task_runs_its_own_line_in_the_shared_sweep_folder(tmp_path, fake_infermatrix):
    cells = tmp_path / "cells.txt"
    cells.write_text("# kv cache study\nengine=hf technique.kv_cache=none\n\n"
                     "  # own engine\nengine=own technique.kv_cache=paged\n")

    done = run_task(cells, 2, fake_infermatrix, "tracker.mode=offline")

    assert done.returncode == 0, done.stderr
    # the job's own output only points at the task's log, in the sweep folder
    assert done.stdout == "sweep.sbatch: task 2 logs to multirun/slurm-4242/logs/task-2.log\n"
    log = (tmp_path / "multirun" / "slurm-4242" / "logs" / "task-2.log").read_text().splitlines()
    assert log[0].startswith("sweep.sbatch: task 2 (job ") and log[0].endswith("engine=own technique.kv_cache=paged tracker.mode=offline")
    assert log[1:] == [
        "-m", "hydra.sweep.dir=multirun/slurm-4242", "hydra.sweep.subdir=2",
        "engine=own", "technique.kv_cache=paged", "tracker.mode=offline", "OMP_NUM_THREADS=6",
        "INFERMATRIX_JOB_NUM=2",  # the row's job_num: the task's index, not job 0 of a one-cell sweep
    ]  # fmt: skip


def test_a_task_run_again_appends_to_its_log(tmp_path, fake_infermatrix):
    cells = tmp_path / "cells.txt"
    cells.write_text("engine=hf\n")
    for _ in range(2):  # a requeued task starts the script again
        assert run_task(cells, 1, fake_infermatrix).returncode == 0
    log = (tmp_path / "multirun" / "slurm-4242" / "logs" / "task-1.log").read_text()
    assert log.count("sweep.sbatch: task 1 (job ") == 2


def test_sweep_sbatch_requeues_itself_on_usr2_and_fits_a_cpu_node():
    text = SBATCH.read_text()
    for directive in ("--requeue", "--signal=B:USR2@120", "--open-mode=append", "--cpus-per-task=2", "--mem=8G"):
        assert f"#SBATCH {directive}\n" in text
    assert "#SBATCH --gres" not in text  # a GPU is asked for on the command line, where there is one
    assert "trap requeue USR2" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text


def test_a_task_beyond_the_cells_file_fails_with_a_message(tmp_path, fake_infermatrix):
    cells = tmp_path / "cells.txt"
    cells.write_text("engine=hf\n")

    done = run_task(cells, 2, fake_infermatrix)

    assert done.returncode == 2 and "has no cell number 2" in done.stderr
    assert done.stdout == ""


def test_sweep_sbatch_time_limit_lets_the_default_cell_timeout_fire_first():
    # a hung cell is then killed and recorded by the harness, not lost with the whole task
    h, m, s = map(int, re.search(r"^#SBATCH --time=(\d+):(\d+):(\d+)$", SBATCH.read_text(), re.M).groups())
    assert (h * 3600 + m * 60 + s) - Config().cell_timeout_s >= 300


@pytest.mark.slow
@needs_slurm
def test_a_real_array_job_measures_every_cell_into_one_table(tmp_path):
    cells = tmp_path / "cells.txt"
    cells.write_text("engine=hf technique.kv_cache=none\nengine=hf technique.kv_cache=contiguous\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "WANDB_SILENT": "true", "INFERMATRIX_SWEEP_DIR": str(tmp_path / "sweep")}  # fmt: skip
    small = ["workload.input_len.mean=8", "workload.output_len.mean=2", "scenario.repeats=2", "scenario.warmup=0",
             "tracker.name=none", f"store={tmp_path / 'store'}"]  # fmt: skip
    submit = ["sbatch", "--parsable", "--wait", "--array=1-2", "--gres=none", "--cpus-per-task=1", "--mem=3G",
              "--time=10", f"--output={tmp_path}/slurm-%A_%a.out", str(SBATCH), str(cells), *small]  # fmt: skip
    done = subprocess.run(submit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    assert done.returncode == 0, done.stderr + "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    rows = load_results(tmp_path / "sweep")
    assert sorted(rows["cell"]) == ["hf/smollm2-135m/latency/fixed/kv_cache=contiguous",
                                    "hf/smollm2-135m/latency/fixed/kv_cache=none"]  # fmt: skip
    assert list(rows["status"]) == ["ok", "ok"] and rows["sweep_id"].nunique() == 1
