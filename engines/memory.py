"""Peak memory of a measured phase.

A background thread samples the process RSS (and, on CUDA with pynvml, the device's used
memory) every few milliseconds, so short-lived peaks between the phase's start and end are
seen. On CUDA the allocator's own peak counters are reset at the start and read at the end.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Any

import psutil

SAMPLE_INTERVAL_S = 0.01


def nvml_handle(device_index: int) -> Any | None:
    """An NVML handle for the torch device, or None without pynvml or a working driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        import torch

        pynvml.nvmlInit()
        uuid = str(getattr(torch.cuda.get_device_properties(device_index), "uuid", "") or "")
        if uuid:  # the UUID survives CUDA_VISIBLE_DEVICES renumbering; the index does not
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:  # pynvml raises its own NVMLError family; any of them means "no NVML reading"
        return None


def tree_rss(processes: list[psutil.Process]) -> int:
    """Summed RSS of processes that still exist."""
    total = 0
    for proc in processes:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def process_tree_rss() -> int:
    """RSS of this process and every descendant (an engine may hold its model in child processes)."""
    me = psutil.Process()
    return tree_rss([me, *me.children(recursive=True)])


class MemoryMonitor:
    """`with MemoryMonitor(device) as m: ...` then `m.result()`: peak bytes during the block. RSS is this
    process's, or with `tree=True` the sum over it and the descendants it has at the start."""

    def __init__(self, device: str, interval_s: float = SAMPLE_INTERVAL_S, tree: bool = False):
        self.device = device
        self.with_children = tree
        self.interval_s = interval_s
        self.process = psutil.Process(os.getpid())
        self.cuda = device.startswith("cuda")
        self.cuda_index = 0
        self.nvml = None
        self.start_rss = 0
        self.peak_rss = 0
        self.peak_nvml_used: int | None = None
        self.samples = 0
        self.cuda_peaks: dict[str, int] = {}
        self.tree: list[psutil.Process] = [self.process]
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss(self.tree))
        if self.nvml is not None:
            import pynvml

            used = int(pynvml.nvmlDeviceGetMemoryInfo(self.nvml).used)
            self.peak_nvml_used = max(self.peak_nvml_used or 0, used)
        self.samples += 1

    def poll(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> MemoryMonitor:
        if self.cuda:
            import torch

            index = torch.device(self.device).index
            index = torch.cuda.current_device() if index is None else index
            torch.cuda.synchronize(index)
            torch.cuda.reset_peak_memory_stats(index)
            self.cuda_index = index
            self.nvml = nvml_handle(index)
        if self.with_children:  # an engine that keeps its model in helper processes (vLLM)
            self.tree = [self.process, *self.process.children(recursive=True)]
        self.start_rss = tree_rss(self.tree)
        self.peak_rss = self.start_rss
        self.sample()
        self.stop_event.clear()
        self.thread = threading.Thread(target=self.poll, name="memory-monitor", daemon=True)
        self.thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.cuda_index)
            self.cuda_peaks = {
                "cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated(self.cuda_index)),
                "cuda_max_reserved_bytes": int(torch.cuda.max_memory_reserved(self.cuda_index)),
            }
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
        self.sample()
        if self.nvml is not None:
            import pynvml

            pynvml.nvmlShutdown()  # balances nvml_handle's nvmlInit (NVML counts them)
            self.nvml = None

    def result(self) -> dict[str, Any]:
        """peak_memory_bytes is the RSS peak on CPU and torch's allocated peak on CUDA."""
        out: dict[str, Any] = {
            "peak_rss_bytes": self.peak_rss,
            "start_rss_bytes": self.start_rss,
            "memory_samples": self.samples,
            **self.cuda_peaks,
        }
        if self.peak_nvml_used is not None:
            out["nvml_peak_used_bytes"] = self.peak_nvml_used
        out["peak_memory_bytes"] = self.cuda_peaks["cuda_max_allocated_bytes"] if self.cuda else self.peak_rss
        return out


def release_memory(device: Any) -> None:
    """Collect what the caller just dropped and hand cached device memory back (for in-process
    cells; an isolated cell's process exit frees everything)."""
    import gc

    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
