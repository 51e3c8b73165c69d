"""The `hardware` config group: what a cell asks a cluster for, and what an hour of it costs.

One option per kind of machine (conf/hardware/<name>.yaml): the SLURM partition, node features
(`constraint`) and GPU request that land a job on it, the CPUs and memory each cell gets, and a
price per device-hour. `conf/hydra/launcher/slurm.yaml` reads the request from here, so
`infermatrix -m hydra/launcher=slurm hardware=h100,a100 ...` submits one array per GPU type. The
name is recorded beside the measured hardware fingerprint; the price turns measured time into
dollars per million output tokens. Prices are inputs, not measurements: set yours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class HardwareConfig:
    name: str = "cpu"
    gpus: int = 0  # GPUs per cell (--gpus-per-node); 0 = a CPU cell, no GPU request
    gres: str | None = None  # a typed request instead, e.g. gpu:h100:1 (its count must equal gpus)
    partition: str | None = None  # null = the cluster's default partition
    constraint: str | None = None  # node features (sbatch --constraint), e.g. h100 or a100-80gb
    cpus: int = 2  # CPUs per cell (--cpus-per-task)
    mem_gb: int = 8  # host memory per cell (--mem)
    price_per_device_hour: float | None = None  # USD per GPU-hour (CPU: per hour of the cell's allocation)

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.cpus < 1 or self.mem_gb < 1:
            raise ValueError(f"hardware '{self.name}': need gpus >= 0, cpus >= 1, mem_gb >= 1")
        if self.gres is not None and gres_gpus(self.gres) != self.gpus:
            raise ValueError(f"hardware '{self.name}': gres={self.gres} asks for {gres_gpus(self.gres)} GPUs "
                             f"but gpus={self.gpus}")  # fmt: skip
        if self.price_per_device_hour is not None and not self.price_per_device_hour >= 0:
            raise ValueError(f"hardware '{self.name}': price_per_device_hour must be >= 0 or null")

    @property
    def devices(self) -> int:
        """Devices a cell pays for: its GPUs, or its CPU allocation as one device."""
        return self.gpus or 1


def gres_gpus(gres: str) -> int:
    """GPUs in a gres string ("gpu:h100:2" -> 2, "gpu" -> 1, "shard:4" -> 0)."""
    parts = gres.split(":")
    if parts[0] != "gpu":
        return 0
    return int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1


def cost_block(hardware: HardwareConfig, device: str, metrics: dict[str, Any], ci95: dict[str, Any]) -> dict:
    """USD per 1M output tokens = price per device-second x devices / output tok/s x 1e6, from the
    measured repeats' throughput (the mean the interval describes; not model load, warm-up or
    accuracy evaluation), with the throughput's 95% interval carried over."""
    price = hardware.price_per_device_hour
    if price is None:
        return {"available": False, "reason": f"hardware '{hardware.name}' has no price_per_device_hour "
                                              "(set hardware.price_per_device_hour=USD)"}  # fmt: skip
    on_gpu = device.startswith("cuda")
    if on_gpu != (hardware.gpus > 0):
        priced = f"{hardware.gpus} GPU(s)" if hardware.gpus else "a CPU allocation"
        return {"available": False, "reason": f"hardware '{hardware.name}' prices {priced} but the cell ran on "
                                              f"{device}: pick the hardware option it ran on"}  # fmt: skip
    tokens, seconds = metrics.get("total_output_tokens") or 0, metrics.get("duration_s") or 0.0
    throughput = metrics.get("output_throughput_tok_s") or 0.0
    if tokens <= 0 or seconds <= 0 or throughput <= 0:
        return {"available": False, "reason": "no output tokens were measured"}
    usd_per_s = price * hardware.devices / 3600
    block = {
        "available": True,
        "usd_per_1m_output_tokens": usd_per_s / throughput * 1e6,
        "usd": usd_per_s * seconds,
        "price_per_device_hour": price,
        "devices": hardware.devices,
        "hardware": hardware.name,
        "measured_s": seconds,
        "output_tokens": tokens,
    }
    interval = ci95.get("output_throughput_tok_s") or {}
    if interval.get("low") and interval.get("high") and interval["low"] > 0:  # cost falls as throughput rises
        block["ci95"] = {"low": usd_per_s / interval["high"] * 1e6, "high": usd_per_s / interval["low"] * 1e6}
    return block


def reprice(row: dict[str, Any], hardware: HardwareConfig, device: str) -> dict[str, Any]:
    """A reused results row with its cost columns priced by the hardware option asked for now."""
    metrics = {k: row.get(k) for k in ("total_output_tokens", "duration_s", "output_throughput_tok_s")}
    ci95 = {"output_throughput_tok_s": {b: row.get(f"ci95.output_throughput_tok_s.{b}") for b in ("low", "high")}}
    cost = cost_block(hardware, device, metrics, ci95)
    out = {k: v for k, v in row.items() if not k.startswith("cost.")}
    out.update({f"cost.{k}": v for k, v in cost.items() if k != "ci95"})
    out.update({f"cost.ci95.{k}": v for k, v in (cost.get("ci95") or {}).items()})
    return {**out, "hardware_config": hardware.name}


def describe(hardware: HardwareConfig) -> dict[str, Any]:
    """What result.json records about the hardware option (beside the measured fingerprint)."""
    return {"name": hardware.name, "gpus": hardware.gpus, "gres": hardware.gres, "partition": hardware.partition,
            "constraint": hardware.constraint, "price_per_device_hour": hardware.price_per_device_hour}  # fmt: skip


SLURM_FIELDS = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
                "restart_count": "SLURM_RESTART_COUNT", "partition": "SLURM_JOB_PARTITION", "node": "SLURMD_NODENAME"}  # fmt: skip


def slurm_job() -> dict[str, str] | None:
    """The SLURM job a cell ran in (restart_count > 0: it was requeued), or None outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {key: os.environ[var] for key, var in SLURM_FIELDS.items() if var in os.environ}
