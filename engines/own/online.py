"""Online serving over the engine loop: requests join the engine as they come due, up to a concurrency limit,
between steps."""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engines.base import Request, RequestOutput, now

if TYPE_CHECKING:
    from engines.own.llm_engine import LLMEngine
    from engines.own.sequence import Sequence


@dataclass(slots=True)
class ServeCounters:
    """Over every serve() call: requests in flight at most, and how long due requests waited for a step to end."""

    peak_in_flight: int = 0
    submitted: int = 0
    lag_sum_s: float = 0.0
    max_lag_s: float = 0.0

    def stats(self) -> dict[str, float]:
        if not self.submitted:
            return {}
        return {
            "serve_peak_in_flight": self.peak_in_flight,
            "serve_submit_lag_ms_mean": 1e3 * self.lag_sum_s / self.submitted,
            "serve_submit_lag_ms_max": 1e3 * self.max_lag_s,
        }


def serve(
    llm: LLMEngine,
    requests: Seq[Request],
    offsets_s: Seq[float],
    max_concurrency: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[RequestOutput]:
    """Online serving: request i is due `offsets_s[i]` seconds after the call starts and is added to
    the engine once it is due and one of `max_concurrency` slots is free; between arrivals the engine
    steps, and with nothing to run it sleeps until the next arrival. Each step's new tokens share
    the step's timestamp. `arrival_time` is when the request was submitted from the client's side:
    its due time, or the moment a slot freed if it waited for one. A request that came due while a
    step ran joins the engine after that step, and that wait counts in its TTFT (a server's queue).
    Every request is validated before any runs; a bad one fails alone. Counts go to `llm.serve_counters`."""
    counters = llm.serve_counters
    errors = [llm.request_error(r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: offsets_s[i])
    pending = deque(order)
    seqs: list[Sequence | None] = [None] * len(requests)
    limit = max_concurrency or len(requests) or 1
    start = now()
    free_slots = [start] * limit  # a min-heap of when each free slot became free
    in_flight = 0
    lags: list[float] = []
    try:
        while pending or llm.has_unfinished():
            while pending and in_flight < limit and now() >= start + offsets_s[pending[0]]:
                i = pending.popleft()
                arrival = max(start + offsets_s[i], heapq.heappop(free_slots))
                seq = seqs[i] = llm.enqueue(requests[i], errors[i], i)
                lags.append(seq.arrival_time - arrival)
                seq.arrival_time = arrival
                in_flight += 1
                counters.peak_in_flight = max(counters.peak_in_flight, in_flight)
            if llm.has_unfinished():
                done = llm.step()
                if done:
                    freed = now()
                    for seq in done:
                        heapq.heappush(free_slots, seq.token_times[-1] if seq.token_times else freed)
                    in_flight -= len(done)
                    if progress is not None:
                        progress(len(done))
            elif pending:  # idle: sleep until the next request is due (slots are all free)
                while (wait := start + offsets_s[pending[0]] - now()) > 0:
                    time.sleep(wait)
    except BaseException as exc:
        llm.abort_all(f"aborted: serve() failed with {type(exc).__name__}")
        raise
    finally:
        if lags:
            counters.submitted += len(lags)
            counters.lag_sum_s += sum(lags)
            counters.max_lag_s = max(counters.max_lag_s, max(lags))
    return [s.output() for s in seqs]
