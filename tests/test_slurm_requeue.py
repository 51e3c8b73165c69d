"""Sweeps that survive a cluster, against the real SLURM daemons (slurm/ci_cluster.sh starts them in CI):
a preempted cell is requeued and recorded once; a killed launcher cancels its jobs, and a rerun after a
launcher killed outright measures nothing twice; an impossible request fails before submitting; the
report job runs after the array. Slow cells are engine=fault with a delay per token (no model)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import record
from slurm_cluster import ROOT, finished, job_env, needs_slurm, queue_states, sacct_states, wait_for

TINY = ["tracker=none", "threads=1", "scenario.repeats=2", "scenario.warmup=0", "workload.input_len.mean=8",
        "workload.output_len.mean=3"]  # fmt: skip
# 1 CPU and 2 GB per cell fits the 2-CPU local node twice; timeout_min <= 10 is where submitit alone
# takes every USR2 for a timeout
LAUNCHER = ["hydra/launcher=slurm", "hardware.cpus=1", "hardware.mem_gb=2", "hydra.launcher.timeout_min=5"]


def rows(table: Path) -> list[dict]:
    return list(record.read_rows(table))


def launcher_sweep(tmp_path: Path, *overrides: str, out: str = "launcher.out") -> subprocess.Popen:
    """The launcher in the background, its output in a file the test can poll."""
    cmd = [sys.executable, "-m", "harness.cli", "-m", *LAUNCHER, "engine=fault", *TINY, f"store={tmp_path / 'store'}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]  # fmt: skip
    log = open(tmp_path / out, "w")
    return subprocess.Popen(cmd, cwd=tmp_path, env=job_env(), stdout=log, stderr=subprocess.STDOUT, text=True)


def submitted_array(tmp_path: Path, out: str = "launcher.out") -> str:
    wait_for(lambda: "as SLURM job(s)" in (tmp_path / out).read_text(), 120, "the launcher to submit")
    text = (tmp_path / out).read_text()
    return re.search(r"as SLURM job\(s\) (\d+)", text).group(1)


def lock_holder(path: Path) -> int | None:
    """The pid holding a cell's lock (harness/record.py writes it there), None when it is free."""
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return int(path.read_text().split()[1])  # "pid N on HOST"
        fcntl.flock(lock, fcntl.LOCK_UN)
    return None


def measuring(job_dir: Path) -> bool:
    """The cell's engine has started generating (its worker log exists and the harness is measuring)."""
    return (job_dir / "worker.log").is_file()


@pytest.mark.slow
@needs_slurm
def test_a_preempted_launcher_cell_is_requeued_and_recorded_once(tmp_path):
    proc = launcher_sweep(tmp_path, "engine.token_delay_s=3,0")  # job 0 takes about 20 s, job 1 none
    array = submitted_array(tmp_path)
    wait_for(lambda: measuring(tmp_path / "sweep" / "0"), 240, "cell 0 to start measuring")
    subprocess.run(["scancel", "--signal=USR2", f"{array}_0"], check=True, timeout=30)  # as a preempting cluster does
    proc.wait(timeout=600)
    out = (tmp_path / "launcher.out").read_text()

    assert proc.returncode == 0, out[-3000:]
    assert "REQUEUED" in sacct_states(f"{array}_0"), sacct_states(f"{array}_0")
    log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").glob(f"{array}_0/*_log.err"))
    assert re.search(r"USR2 with \d+ s of the time limit left: preemption", log), log[-2000:]
    table = rows(tmp_path / "sweep" / record.TABLE_NAME)
    assert sorted((r["job_num"], r["status"]) for r in table) == [(0, "ok"), (1, "ok")]  # one row per cell
    requeued = next(r for r in table if r["job_num"] == 0)
    assert requeued["slurm.restart_count"] == "1" and not requeued.get("reused")
    assert len(rows(tmp_path / "store" / record.TABLE_NAME)) == 2  # measured once each
    assert "Sweep summary" in out


@pytest.mark.slow
@needs_slurm
def test_a_preempted_sweep_sbatch_task_requeues_itself_and_the_report_job_follows(tmp_path):
    cells = tmp_path / "cells.txt"
    cells.write_text("engine=fault engine.token_delay_s=3\nengine=fault\n")
    env = job_env(INFERMATRIX_SWEEP_DIR=str(tmp_path / "sweep"))
    submit = ["bash", str(ROOT / "slurm" / "submit_sweep.sh"), str(cells), "--cpus-per-task=1", "--mem=2G",
              "--time=10", "--", *TINY, f"store={tmp_path / 'store'}"]  # fmt: skip
    done = subprocess.run(submit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    array, report = re.search(r"array job (\d+) \(2 cells\), report job (\d+)", done.stdout).groups()
    wait_for(lambda: measuring(tmp_path / "sweep" / "1"), 240, "task 1 to start measuring")
    subprocess.run(["scancel", "--batch", "--signal=USR2", f"{array}_1"], check=True, timeout=30)  # to the script's trap
    wait_for(lambda: finished(report), 600, "the report job to run after the array")

    assert "REQUEUED" in sacct_states(f"{array}_1") and sacct_states(report)[-1] == "COMPLETED"
    log = (tmp_path / "sweep" / "logs" / "task-1.log").read_text()
    assert "USR2 at " in log and "requeueing job" in log
    assert "(job " in log and "restart 0)" in log and "restart 1)" in log  # appended across the requeue
    table = rows(tmp_path / "sweep" / record.TABLE_NAME)
    assert sorted((r["job_num"], r["status"]) for r in table) == [(1, "ok"), (2, "ok")]
    assert next(r for r in table if r["job_num"] == 1)["slurm.restart_count"] == "1"
    report_text = (tmp_path / "sweep" / "report.txt").read_text()
    assert "fault/smollm2-135m/latency/fixed/token_delay_s=3.0" in report_text
    # every log is in the sweep folder; nothing landed in the submit folder
    assert {p.name for p in (tmp_path / "sweep" / "logs").iterdir()} == {
        "report.log", f"report-{report}.out", "slurm-1.out", "slurm-2.out", "task-1.log", "task-2.log"}  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.txt", "store", "sweep"]


@pytest.mark.slow
@needs_slurm
def test_a_terminated_launcher_cancels_its_jobs_and_a_rerun_completes_the_sweep(tmp_path):
    sweep = ["engine.token_delay_s=3", "engine.fault_at=init,generate"]  # two slow cells
    proc = launcher_sweep(tmp_path, *sweep)
    array = submitted_array(tmp_path)
    wait_for(lambda: measuring(tmp_path / "sweep" / "0") or measuring(tmp_path / "sweep" / "1"), 240,
             "a cell to start measuring")  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    out = (tmp_path / "launcher.out").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert f"launcher stopped by SIGTERM: cancelled SLURM job(s) {array}" in out and "Traceback" not in out
    # each task by itself: accounting may hold one task's record before the other's
    wait_for(lambda: all(finished(f"{array}_{i}") for i in (0, 1)), 120, "both cancelled tasks to leave the queue")
    assert {sacct_states(f"{array}_{i}")[-1] for i in (0, 1)} == {"CANCELLED"}

    rerun = launcher_sweep(tmp_path, *sweep, out="rerun.out")
    rerun.wait(timeout=600)
    assert rerun.returncode == 0, (tmp_path / "rerun.out").read_text()[-3000:]
    table = rows(tmp_path / "sweep" / record.TABLE_NAME)
    assert sorted((r["job_num"], r["status"]) for r in table) == [(0, "ok"), (1, "ok")]


@pytest.mark.slow
@needs_slurm
def test_a_rerun_after_the_launcher_is_killed_outright_measures_no_cell_twice(tmp_path):
    # SIGKILL leaves no chance to cancel: the old job goes on measuring while the rerun's job for the same
    # cell starts; the store's lock makes the rerun wait for it and reuse its result
    sweep = ["engine.token_delay_s=4,0"]
    proc = launcher_sweep(tmp_path, *sweep)
    array = submitted_array(tmp_path)
    wait_for(lambda: measuring(tmp_path / "sweep" / "0"), 240, "the slow cell to start measuring")
    proc.kill()
    proc.wait(timeout=60)
    assert "RUNNING" in queue_states(f"{array}_0")  # the orphaned job goes on (sacct may lag under load)

    rerun = launcher_sweep(tmp_path, *sweep, out="rerun.out")
    rerun.wait(timeout=600)
    out = (tmp_path / "rerun.out").read_text()
    assert rerun.returncode == 0, out[-3000:]
    wait_for(lambda: finished(array), 300, "the first launcher's jobs to end")
    stored = rows(tmp_path / "store" / record.TABLE_NAME)
    assert len(stored) == 2 and len({r["config_hash"] for r in stored}) == 2, stored  # each cell measured once
    rerun_array = re.search(r"as SLURM job\(s\) (\d+)", out).group(1)
    rerun_log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").glob(f"{rerun_array}_0/*_log.*"))
    assert "already measured" in rerun_log, rerun_log[-2000:]  # the rerun's job reused the orphan's measurement
    table = rows(tmp_path / "sweep" / record.TABLE_NAME)
    assert sorted((r["job_num"], r["status"]) for r in table) == [(0, "ok"), (1, "ok")]  # and counted once


@pytest.mark.slow
@needs_slurm
def test_a_job_slurm_ends_without_a_result_is_a_failed_row_and_the_sweep_goes_on(tmp_path):
    proc = launcher_sweep(tmp_path, "engine.token_delay_s=5,0")  # cell 0 takes 30 s, cell 1 none
    array = submitted_array(tmp_path)
    wait_for(lambda: measuring(tmp_path / "sweep" / "0"), 240, "cell 0 to start measuring")
    wait_for(lambda: any(r["job_num"] == 1 for r in rows(tmp_path / "sweep" / record.TABLE_NAME)), 240,
             "cell 1 to be recorded (then only cell 0 holds a lock)")  # fmt: skip
    # the job's harness killed outright, as the OOM killer does: it writes no row (a scancel's SIGTERM would
    # let it record the crash itself); its pid is in the lock it holds on the cell
    [holder] = [pid for pid in map(lock_holder, (tmp_path / "store" / "locks").glob("*.lock")) if pid]
    os.kill(holder, signal.SIGKILL)
    proc.wait(timeout=600)
    out = (tmp_path / "launcher.out").read_text()

    assert proc.returncode == 1, out[-3000:]  # every cell collected; one failed
    table = {r["job_num"]: r for r in rows(tmp_path / "sweep" / record.TABLE_NAME)}
    assert table[1]["status"] == "ok" and table[0]["status"] == "failed"
    assert table[0]["reason"].startswith(f"SLURM job {array}_0 ended without a result ("), table[0]["reason"]
    assert table[0]["job_dir"] == str(tmp_path / "sweep" / "0") and "Sweep summary" in out


@pytest.mark.slow
@needs_slurm
def test_cells_asking_for_different_hardware_go_to_separate_arrays(tmp_path):
    proc = launcher_sweep(tmp_path, "hardware.mem_gb=2,3", "engine.fault_at=init,generate")  # 4 cells, 2 requests
    proc.wait(timeout=600)
    out = (tmp_path / "launcher.out").read_text()
    assert proc.returncode == 0, out[-3000:]

    jobs = re.search(r"submitted 4 cell\(s\) as SLURM job\(s\) (\d+) (\d+);", out).groups()
    asked = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(jobs), "-o", "JobID,ReqMem"], capture_output=True,
                           text=True, timeout=30).stdout.split()  # fmt: skip
    assert sorted({line.split("|")[1] for line in asked}) == ["2G", "3G"]  # each array asks for its option's memory
    assert len(rows(tmp_path / "sweep" / record.TABLE_NAME)) == 4


@needs_slurm
def test_a_request_no_node_can_satisfy_fails_before_submitting(tmp_path):
    cmd = [sys.executable, "-m", "harness.cli", "-m", "hydra/launcher=slurm", "hardware=h100", "engine=fault", *TINY,
           f"store={tmp_path / 'store'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=120)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "SLURM cannot run this sweep:\n  hardware=h100: no node of partition" in done.stderr
    assert "lacks 8 CPUs" in done.stderr or "GPU(s)" in done.stderr
    assert "Available (sinfo): partition" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing was submitted


def test_results_carry_the_hardware_option_cost_and_energy_or_its_reason(tmp_path):
    cmd = [sys.executable, "-m", "harness.cli", "engine=fault", *TINY, "hardware.price_per_device_hour=0.5",
           f"store={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())

    assert result["hardware_config"]["name"] == "cpu" and result["hardware_id"]
    throughput = result["metrics"]["output_throughput_tok_s"]
    assert result["cost"]["usd_per_1m_output_tokens"] == pytest.approx(0.5 / 3600 / throughput * 1e6)
    energy = result["energy"]
    assert energy["available"] or energy["reason"]  # a reading, or why there is none on this machine
    [row] = rows(tmp_path / "store" / record.TABLE_NAME)
    assert row["hardware_config"] == "cpu" and row["cost.usd_per_1m_output_tokens"] > 0
