"""Energy of a measured phase, from the counters the hardware keeps.

- GPUs: NVML's total energy counter (mJ since the driver loaded; Volta and newer) of every GPU the
  job may use (CUDA_VISIBLE_DEVICES, else all), read before and after. Needs pynvml (nvidia-ml-py).
- CPUs: RAPL package counters under /sys/class/powercap (intel-rapl:N, µJ, wrapping at
  max_energy_range_uj). Linux makes energy_uj readable by root only; VMs usually expose none.

Both count everything on the device or socket, other processes included. When no counter can be read
the block says why (`available: false`, `reason`), so a result never shows an energy it did not measure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

POWERCAP = Path("/sys/class/powercap")


def rapl_domains(root: Path = POWERCAP) -> tuple[dict[str, Path], str | None]:
    """Package-level RAPL zones (intel-rapl:0, intel-rapl:1..., not their subzones), or why there are none."""
    if not root.is_dir():
        return {}, f"{root} does not exist: this kernel exposes no RAPL counters (a VM, or no powercap driver)"
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not zones:
        return {}, f"{root} has no intel-rapl package zone"
    domains = {}
    for zone in zones:
        try:
            (zone / "energy_uj").read_text()
        except OSError as exc:
            return {}, f"{zone / 'energy_uj'} is not readable ({exc.strerror}): Linux allows root only; run as root or chmod it"
        name = (zone / "name").read_text().strip() if (zone / "name").is_file() else zone.name
        domains[f"{name}({zone.name})"] = zone
    return domains, None


def read_rapl(domains: dict[str, Path]) -> dict[str, int]:
    return {name: int((zone / "energy_uj").read_text()) for name, zone in domains.items()}


def rapl_joules(domains: dict[str, Path], start: dict[str, int], end: dict[str, int]) -> dict[str, float]:
    """Joules per zone; a counter that wrapped once adds its range."""
    out = {}
    for name, zone in domains.items():
        delta = end[name] - start[name]
        if delta < 0:
            delta += int((zone / "max_energy_range_uj").read_text())
        out[name] = delta / 1e6
    return out


def nvml_devices() -> tuple[Any, dict[str, Any], str | None]:
    """(pynvml, {label: handle} for the GPUs this job may use, reason when none)."""
    try:
        import pynvml
    except ImportError:
        return None, {}, "pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [
            str(i) for i in range(pynvml.nvmlDeviceGetCount())]  # fmt: skip
        handles = {}
        for ident in ids:  # an index or a UUID (GPU-...), as CUDA_VISIBLE_DEVICES allows
            handle = (pynvml.nvmlDeviceGetHandleByUUID(ident) if ident.startswith(("GPU-", "MIG-"))
                      else pynvml.nvmlDeviceGetHandleByIndex(int(ident)))  # fmt: skip
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises NotSupported before Volta
            handles[f"gpu{ident}"] = handle
        return pynvml, handles, None if handles else "NVML sees no GPU"
    except Exception as exc:  # pynvml's NVMLError family: no driver, not supported, bad id
        return None, {}, f"NVML energy counter unavailable: {exc}"


class EnergyMeter:
    """`with EnergyMeter(device) as e: ...` then `e.result()`: joules over the block, or why none."""

    def __init__(self, device: str, powercap: Path = POWERCAP) -> None:
        self.source = "nvml" if device.startswith("cuda") else "rapl"
        self.powercap = powercap
        self.reason: str | None = None
        self.joules: dict[str, float] = {}
        self.seconds = 0.0

    def read(self) -> dict[str, int]:
        if self.source == "nvml":
            return {k: int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for k, h in self.handles.items()}
        return read_rapl(self.domains)

    def __enter__(self) -> EnergyMeter:
        if self.source == "nvml":
            self.nvml, self.handles, self.reason = nvml_devices()
        else:
            self.domains, self.reason = rapl_domains(self.powercap)
        self.started = time.perf_counter()
        self.start = self.read() if self.reason is None else {}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self.started
        if self.reason is not None:
            return
        try:
            end = self.read()
            if self.source == "nvml":
                self.joules = {k: (end[k] - self.start[k]) / 1e3 for k in end}  # mJ, a 64-bit counter
                self.nvml.nvmlShutdown()
            else:
                self.joules = rapl_joules(self.domains, self.start, end)
        except Exception as exc:  # a counter that vanished mid-run: say so rather than guess
            self.reason = f"{self.source} counter read failed at the end: {exc}"

    def result(self, generated_tokens: int) -> dict[str, Any]:
        if self.reason is not None:
            return {"available": False, "source": self.source, "reason": self.reason}
        total = sum(self.joules.values())
        return {
            "available": True,
            "source": self.source,
            "joules": total,
            "by_domain": self.joules,
            "seconds": self.seconds,
            "mean_watts": total / self.seconds if self.seconds > 0 else None,
            "generated_tokens": generated_tokens,
            "joules_per_token": total / generated_tokens if generated_tokens else None,
            "scope": "whole GPUs" if self.source == "nvml" else "whole CPU packages",
        }
