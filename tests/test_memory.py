"""MemoryMonitor: the measured peak covers what the phase allocated, even if freed before it ends."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

from engines.memory import MemoryMonitor

MIB = 1 << 20
SIZE = 256 * MIB


def allocate(nbytes: int) -> torch.Tensor:
    return torch.ones(nbytes // 4, dtype=torch.float32)  # ones, not empty: pages must be touched


def held_phase() -> dict:
    with MemoryMonitor("cpu") as monitor:
        held = allocate(SIZE)
    del held
    return monitor.result()


def transient_phase() -> dict:
    with MemoryMonitor("cpu", interval_s=0.005) as monitor:
        transient = allocate(SIZE)
        time.sleep(0.2)  # several sampling intervals while the tensor is alive
        del transient
        time.sleep(0.05)
    return monitor.result()


def in_fresh_process(phase) -> dict:
    """Run a phase in a new interpreter: in the long-lived pytest process the allocator may hand back
    pages an earlier test freed but kept resident, so the RSS would not rise (seen once in CI)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(phase)


def test_a_tensor_alive_at_the_end_of_the_phase_raises_the_peak_by_its_size():
    result = in_fresh_process(held_phase)
    assert result["peak_memory_bytes"] == result["peak_rss_bytes"]
    assert result["peak_rss_bytes"] - result["start_rss_bytes"] >= 0.95 * SIZE


def test_a_tensor_freed_inside_the_phase_is_still_caught_by_the_sampler():
    result = in_fresh_process(transient_phase)
    assert result["memory_samples"] >= 3
    assert result["peak_rss_bytes"] - result["start_rss_bytes"] >= 0.95 * SIZE


def test_a_phase_that_allocates_nothing_reports_a_small_rise():
    with MemoryMonitor("cpu") as monitor:
        time.sleep(0.05)
    result = monitor.result()
    assert 0 <= result["peak_rss_bytes"] - result["start_rss_bytes"] < 32 * MIB
    assert "cuda_max_allocated_bytes" not in result


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_counts_a_device_tensor_allocated_inside_the_phase():
    before = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")  # lives across the phase
    with MemoryMonitor("cuda") as monitor:
        transient = torch.ones(SIZE // 4, device="cuda")
        del transient
    result = monitor.result()
    assert result["peak_memory_bytes"] == result["cuda_max_allocated_bytes"]
    assert result["cuda_max_allocated_bytes"] >= SIZE + before.numel()
    assert result["cuda_max_reserved_bytes"] >= result["cuda_max_allocated_bytes"]
