"""What vLLM reports back: its per-step scheduler statistics, and memory over its process tree."""

from __future__ import annotations

from typing import Any

from engines.memory import MemoryMonitor


class TreeMemoryMonitor(MemoryMonitor):
    """Peak memory as the process tree's RSS: vLLM's weights and KV cache live in its child processes,
    out of reach of this process's torch allocator counters."""

    def __init__(self, device: str) -> None:
        super().__init__(device, tree=True)

    def result(self) -> dict[str, Any]:
        out = super().result()
        out["peak_memory_bytes"] = self.peak_rss
        out["memory_scope"] = "process tree (RSS)"
        return out


class StatsRecorder:
    """A vLLM stat logger: vLLM calls record() after every step with its scheduler stats (KV usage, prefix-cache
    queries and hits) and iteration stats (preemptions); stats() reports what it kept."""

    def __init__(self) -> None:
        self.kv_usage_last: float | None = None
        self.kv_usage_peak: float | None = None
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:  # fmt: skip
        if scheduler_stats is not None:
            usage = float(scheduler_stats.kv_cache_usage)
            self.kv_usage_last = usage
            self.kv_usage_peak = max(self.kv_usage_peak or 0.0, usage)
            prefix = scheduler_stats.prefix_cache_stats
            if prefix is not None:
                self.prefix_queries += int(prefix.queries)
                self.prefix_hits += int(prefix.hits)
        if iteration_stats is not None:
            self.preemptions += int(getattr(iteration_stats, "num_preempted_reqs", 0))

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass
