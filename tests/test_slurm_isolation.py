"""What process isolation and the store's lock promise on a cluster: a cell that segfaults or
hangs inside a submitit job is recorded like any other and the launcher reaches the sweep
summary; two SLURM jobs running the same cell at once measure it only once.

The real-cluster tests need a SLURM node that is up (slurm/local_cluster.sh, or slurm/ci_cluster.sh in
CI, starts one) and skip without it; the submitit_local one needs no cluster."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness import record
from harness.config import register
from harness.runner import semantic_config
from slurm_cluster import job_env, needs_slurm, wait_for

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "slurm" / "sweep.sbatch"
TINY = ["tracker=none", "scenario.repeats=2", "scenario.warmup=0", "workload.input_len.mean=8",
        "workload.output_len.mean=3", "threads=1"]  # fmt: skip
# what a 2-core CPU-only node can give each cell of the slurm launcher (conf/hydra/launcher/slurm.yaml)
CPU_LAUNCHER = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
                "hydra.launcher.timeout_min=10", "hydra.launcher.array_parallelism=2"]  # fmt: skip


def fault_sweep(tmp_path: Path, *launcher: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", "-m", *launcher, "engine=fault", "engine.fault=none,segfault,hang",
           "cell_timeout_s=20", *TINY, f"store={tmp_path / 'store'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=job_env())


def check_every_cell_recorded(tmp_path: Path, proc: subprocess.CompletedProcess) -> None:
    sweep = tmp_path / "sweep"
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in sweep.glob(".submitit/*/*.err"))
    assert proc.returncode == 1, proc.stderr[-3000:] + logs  # every cell recorded; some failed
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    results = [json.loads((sweep / str(i) / "result.json").read_text()) for i in range(3)]
    assert [r["status"] for r in results] == ["ok", "failed", "failed"]
    assert "engine process killed by SIGSEGV (11) during generate" in results[1]["reason"]
    assert "cell timed out (cell_timeout_s=20) during generate; its process was killed" in results[2]["reason"]
    rows = list(record.read_rows(sweep / record.TABLE_NAME))
    assert sorted(r["job_num"] for r in rows) == [0, 1, 2]
    assert {r["job_num"]: r["status"] for r in rows} == {0: "ok", 1: "failed", 2: "failed"}
    # the launcher process waited for every job and printed the summary of all three
    summary = proc.stdout[proc.stdout.index("Sweep summary"):]
    for text in ("SIGSEGV", "cell_timeout_s=20"):
        assert text in summary
    assert "2 cell(s) failed" in proc.stderr


def test_submitit_local_sweep_records_crashed_and_hung_cells_and_prints_its_summary(tmp_path):
    proc = fault_sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    check_every_cell_recorded(tmp_path, proc)


@pytest.mark.slow
@needs_slurm
def test_slurm_launcher_sweep_records_crashed_and_hung_cells_and_prints_its_summary(tmp_path):
    proc = fault_sweep(tmp_path, "hydra/launcher=slurm", *CPU_LAUNCHER)
    check_every_cell_recorded(tmp_path, proc)
    # it really ran as SLURM jobs: submitit kept their logs under the sweep folder
    assert list((tmp_path / "sweep" / ".submitit").glob("*_*/*_log.out"))


def config_hash(overrides: list[str]) -> str:
    """The hash run_cell gives the cell these overrides make (the name of its store lock)."""
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return record.config_hash(semantic_config(resolved))  # the runner's own rule, not a copy of it


@pytest.mark.slow
@needs_slurm
def test_two_jobs_running_the_same_cell_at_once_measure_it_once(tmp_path):
    cell = ["engine=fault", "engine.fault=none"]
    store = tmp_path / "store"
    extra = [*TINY, f"store={store}"]
    chash = config_hash([*cell, *extra])
    cells = tmp_path / "cells.txt"
    cells.write_text(" ".join(cell) + "\n" + " ".join(cell) + "\n")  # the same cell twice
    outs = [tmp_path / "sweep" / "logs" / f"task-{i}.log" for i in (1, 2)]  # sweep.sbatch's task logs

    # Hold the cell's lock while both array tasks start, so they surely overlap: each must wait.
    lock_path = store / "locks" / f"{chash}.lock"
    lock_path.parent.mkdir(parents=True)
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("the test")
        lock.flush()
        submit = ["sbatch", "--parsable", "--wait", "--array=1-2", "--gres=none", "--cpus-per-task=1",
                  "--mem=2G", "--time=10", f"--output={tmp_path}/task-%a.out", str(SBATCH), str(cells),
                  *extra]  # fmt: skip
        env = job_env(INFERMATRIX_SWEEP_DIR=str(tmp_path / "sweep"))
        sbatch = subprocess.Popen(submit, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            waiting = f"waiting: the test is measuring this cell ({chash})"
            wait_for(lambda: all(o.is_file() and waiting in o.read_text() for o in outs), 240,
                     "both tasks to wait for the cell's lock")  # fmt: skip
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        _, stderr = sbatch.communicate(timeout=600)
    texts = [o.read_text() for o in outs]
    assert sbatch.returncode == 0, stderr + "".join(texts)

    # one task measured the cell, the other found it measured once it got the lock
    assert sum("already measured" in t for t in texts) == 1, texts
    stored = list(record.read_rows(store / record.TABLE_NAME))
    assert [(r["config_hash"], r["status"]) for r in stored] == [(chash, "ok")]
    measured = [tmp_path / "sweep" / str(i) / "result.json" for i in (1, 2)]
    assert [p.is_file() for p in measured].count(True) == 1
    assert stored[0]["result_path"] == str(next(p for p in measured if p.is_file()))
    # the array's shared table has both tasks: the measured row and the reused one
    rows = list(record.read_rows(tmp_path / "sweep" / record.TABLE_NAME))
    assert sorted(r["job_num"] for r in rows) == [1, 2]  # each row carries its array task's index
    assert sorted(bool(r.get("reused")) for r in rows) == [False, True], rows
    assert {r["config_hash"] for r in rows} == {chash}
