"""SLURM launch files: the submitit launcher config composes, and sweep.sbatch runs its task's cell."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from harness.config import register

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "slurm" / "sweep.sbatch"


def test_the_slurm_launcher_composes_into_submitit_settings():
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)  # fmt: skip
        HydraConfig.instance().set_config(cfg)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)

    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["partition"], launcher["cpus_per_task"], launcher["gpus_per_node"]) == ("gpu", 8, 1)
    assert launcher["setup"] == ["export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"]  # shell syntax survives


@pytest.fixture
def fake_infermatrix(tmp_path) -> Path:
    """An `infermatrix` on PATH that prints its arguments, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "infermatrix"
    script.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\necho "OMP_NUM_THREADS=$OMP_NUM_THREADS"\n')
    script.chmod(0o755)
    return bin_dir


def run_task(cells: Path, task: int, bin_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_NUM_THREADS"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_JOB_ID="4242",
               SLURM_CPUS_PER_TASK="6")  # fmt: skip
    return subprocess.run(["bash", str(SBATCH), str(cells), *extra], env=env, capture_output=True, text=True)


def test_each_array_task_runs_its_own_line_in_the_shared_sweep_folder(tmp_path, fake_infermatrix):
    cells = tmp_path / "cells.txt"
    cells.write_text("# kv cache study\nengine=hf technique.kv_cache=none\n\n  # own engine\nengine=own technique.kv_cache=paged\n")

    done = run_task(cells, 2, fake_infermatrix, "tracker.mode=offline")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "-m", "hydra.sweep.dir=multirun/slurm-4242", "hydra.sweep.subdir=2",
        "engine=own", "technique.kv_cache=paged", "tracker.mode=offline", "OMP_NUM_THREADS=6",
    ]  # fmt: skip


def test_a_task_beyond_the_cells_file_fails_with_a_message(tmp_path, fake_infermatrix):
    cells = tmp_path / "cells.txt"
    cells.write_text("engine=hf\n")

    done = run_task(cells, 2, fake_infermatrix)

    assert done.returncode == 2 and "has no cell number 2" in done.stderr
    assert done.stdout == ""
