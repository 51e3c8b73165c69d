"""What the real-cluster tests share: whether a SLURM node is up, the environment jobs inherit, and
polling with generous limits (a requeued job restarts in 12-15 s on the local cluster, longer on a
busy CI machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UP_STATES = ("idle", "mix", "alloc")  # a node that answers; busy is fine, the tests queue behind


def slurm_node_up() -> str | None:
    """None when a node is up with accounting answering, else why not."""
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
        accounting = subprocess.run(["sacctmgr", "-n", "list", "cluster"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no SLURM here ({exc}); slurm/local_cluster.sh starts one"
    if not any(s in nodes.stdout for s in UP_STATES):
        return f"no SLURM node is up (sinfo: {nodes.stdout.strip() or nodes.stderr.strip()}); slurm/local_cluster.sh starts one"
    if accounting.returncode != 0:
        return "SLURM accounting (slurmdbd) does not answer: submitit and these tests poll sacct"
    return None


_WHY_NOT = slurm_node_up()
needs_slurm = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")


def job_env(**extra: str) -> dict[str, str]:
    """The environment jobs inherit: this interpreter's bin first, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYTHONPATH=str(ROOT), WANDB_SILENT="true",
               **extra)  # fmt: skip
    return env


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.5)


def sacct_states(job: str) -> list[str]:
    """Every state the job (or array task) went through, requeues included (sacct -D)."""
    done = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "JobID,State"], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    return [line.split("|")[1].split()[0] for line in done.stdout.splitlines() if "|" in line]


def queue_states(job: str) -> list[str]:
    """The controller's states of the job's tasks now (squeue: no accounting lag, unlike sacct)."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30).stdout
    return out.split()


def finished(job: str) -> bool:
    """The job (all tasks of an array) has left the queue and accounting says how it ended."""
    queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30).stdout.strip()
    states = sacct_states(job)
    return not queued and bool(states) and states[-1] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")
