"""What a result was measured on, and the thread settings it was measured with.

Engine-side (no Hydra, W&B or lm-eval): the cell's worker process calls it where the engine runs.

Only named facts are collected (never the whole environment), so secrets such as API keys
cannot leak into a record. torch is imported lazily: `configure_threads` can then set
OMP_WAIT_POLICY before the OpenMP runtime loads, which is the only time the runtime reads it.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_POLICIES = ("PASSIVE", "ACTIVE")  # OMP_WAIT_POLICY values; unset = the OpenMP runtime's default
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
PACKAGES = ("torch", "transformers", "triton")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and whether tracked files differ from it; None values outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return {"git_sha": None, "git_dirty": None}
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": sha, "git_dirty": None if changes is None else bool(changes)}


def code_version(repo: Path = REPO_ROOT) -> str:
    """Package version + commit, plus a hash of the uncommitted diff when the tree is dirty:
    two results share it only when the same code measured them."""
    state = git_state(repo)
    version = f"{package_version('infermatrix') or 'unknown'}+{(state['git_sha'] or 'nogit')[:12]}"
    if state["git_dirty"]:
        try:
            diff = subprocess.run(["git", "diff", "HEAD"], cwd=repo, capture_output=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            diff = b""
        version += f".dirty-{hashlib.sha256(diff).hexdigest()[:8]}"
    return version


def resolve_device(requested: str) -> str:
    """auto -> cuda when torch sees one, else cpu; cuda without a device is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA device (device=auto picks what exists)")
    return requested


def hardware_fingerprint(device: str) -> dict[str, Any]:
    """What must match for a stored result to stand for a new one: the device kind and the
    processor (CPU model and cores) or the GPUs (names, count, driver)."""
    if device.startswith("cuda"):
        gpus = gpu_facts()
        return {"device": device, "gpu_names": gpus.get("gpu_names"), "gpu_count": gpus["gpu_count"],
                "gpu_driver": gpus.get("gpu_driver")}  # fmt: skip
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"device": device, "cpu_model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable}


def gpu_facts() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu_count": 0}
    count = torch.cuda.device_count()
    facts: dict[str, Any] = {
        "gpu_count": count,
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(count)],
        "gpu_memory_bytes": [torch.cuda.get_device_properties(i).total_memory for i in range(count)],
        "cuda_version": torch.version.cuda,
        "gpu_driver": driver_version(),
    }
    return facts


def driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no pynvml, or NVML errors: fall back to nvidia-smi
        pass
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def collect_environment(device: str) -> dict[str, Any]:
    import torch

    return {
        "device": device,
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
        **gpu_facts(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        **git_state(),
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def startup_env(name: str) -> str | None:
    """A variable's value when the process started (/proc/self/environ), None if absent or unreadable."""
    try:
        entries = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = name.encode() + b"="
    return next((e[len(prefix) :].decode(errors="replace") for e in entries if e.startswith(prefix)), None)


def configure_threads(num_threads: int | None, wait_policy: str | None = None) -> dict[str, Any]:
    """Set torch's thread count (None: leave it) and, when given, OMP_WAIT_POLICY (PASSIVE or ACTIVE).

    Unset, the OpenMP runtime keeps its default: libgomp's threads spin briefly at a barrier, then sleep.
    On a quiet machine that is what a torch user gets, and PASSIVE (sleep at once) costs every small
    parallel region a wake-up: batch-1 decode on own went from 25.7 to 37.7 ms per token here. On a
    shared machine spinning threads fight the other process: the same decode took 87 ms spinning and
    37.6 ms PASSIVE beside one busy process. The runtime reads the variable once, when torch is first
    imported; setting it later reaches only child processes. `omp_wait_policy_runtime` is the value the
    runtime read: "unset" for its default, None when it cannot be known (set in-process after start-up).
    """
    if wait_policy is not None and wait_policy not in WAIT_POLICIES:
        raise ValueError(f"wait_policy must be one of {', '.join(WAIT_POLICIES)} or None, got {wait_policy!r}")
    before = os.environ.get("OMP_WAIT_POLICY")
    runtime_loaded = "torch" in sys.modules
    if wait_policy is not None:
        os.environ["OMP_WAIT_POLICY"] = wait_policy
    current = os.environ.get("OMP_WAIT_POLICY")
    if not runtime_loaded:
        runtime_policy: str | None = current or "unset"
    elif before is None:
        runtime_policy = "unset"
    else:
        runtime_policy = before if startup_env("OMP_WAIT_POLICY") == before else None
    import torch

    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        torch.set_num_threads(num_threads)
    return {
        "requested_threads": num_threads,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "omp_wait_policy_runtime": runtime_policy,
    }
