"""Seeded arrival schedules for the serving scenario, as vLLM's serving benchmark draws them.

Gaps between consecutive requests are gamma-distributed with shape k = `burstiness` and scale
θ = 1 / (rate · k), so their mean is 1/rate whatever k is: k = 1 is a Poisson process (exponential
gaps), k < 1 is burstier, k > 1 more regular. The first request arrives at offset 0; rate = inf puts
every request at 0 (all at once). The same seed, rate, shape and count give the same schedule and hash.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from harness.config import ArrivalProcess

ARRIVAL_STREAM = 7_919  # keeps arrival draws apart from the workload's prompt draws of the same seed


def arrival_offsets(
    num_requests: int, rate: float, arrival: ArrivalProcess, burstiness: float, seed: int, index: int
) -> list[float]:
    """Seconds after the start at which each request arrives, non-decreasing, in request order.
    `seed` is the workload's seed and `index` the run's (each repeat gets its own schedule)."""
    if num_requests < 1:
        return []
    if math.isinf(rate):
        return [0.0] * num_requests
    shape = 1.0 if arrival is ArrivalProcess.poisson else burstiness
    rng = np.random.default_rng([seed, ARRIVAL_STREAM, index])
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=num_requests - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


def schedule_hash(offsets: list[float]) -> str:
    """A short hash of a schedule (offsets to the nanosecond), recorded with each run."""
    payload = json.dumps([round(o, 9) for o in offsets], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def describe_schedule(offsets: list[float]) -> dict:
    """Hash, span and the realised mean rate of a schedule (inf when everything arrives at once)."""
    span = offsets[-1] - offsets[0] if offsets else 0.0
    return {
        "hash": schedule_hash(offsets),
        "span_s": span,
        "realised_rate": (len(offsets) - 1) / span if span > 0 else "inf",
    }
