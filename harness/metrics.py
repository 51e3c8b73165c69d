"""Latency and throughput metrics, defined as vLLM's benchmark defines them.

Per request, from the engine's per-token timestamps:
- TTFT  = time of the first generated token - arrival time
- E2EL  = time of the last generated token - arrival time
- TPOT  = (E2EL - TTFT) / (output tokens - 1), for requests with more than one output token
- ITL   = every gap between consecutive tokens, pooled over all requests
Per run (one repeat): duration = last token of any request - first arrival;
output throughput = output tokens / duration; total throughput = (input + output) / duration;
request throughput = requests / duration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engines.base import RequestOutput

PERCENTILES = (50, 90, 95, 99)
HEADLINE = ("output_throughput_tok_s", "ttft_ms.mean", "tpot_ms.mean", "e2el_ms.mean")


@dataclass(slots=True)
class RequestTiming:
    prompt_len: int
    output_len: int
    ttft_ms: float
    e2el_ms: float
    tpot_ms: float | None
    itl_ms: list[float]


def request_timing(out: RequestOutput) -> RequestTiming:
    times = out.token_times
    if not times:
        raise ValueError(f"request {out.request_id} produced no tokens ({out.finish_reason}: {out.error})")
    ttft = (times[0] - out.arrival_time) * 1e3
    e2el = (times[-1] - out.arrival_time) * 1e3
    n = len(times)
    tpot = (e2el - ttft) / (n - 1) if n > 1 else None
    itl = [(b - a) * 1e3 for a, b in zip(times, times[1:])]
    return RequestTiming(out.prompt_len, n, ttft, e2el, tpot, itl)


def distribution(values: Sequence[float]) -> dict[str, float]:
    """mean, std and percentiles; NaN for an empty sample (e.g. TPOT when every output is 1 token)."""
    if len(values) == 0:
        return {key: float("nan") for key in ("mean", "std", *(f"p{p}" for p in PERCENTILES))}
    arr = np.asarray(values, dtype=np.float64)
    stats = {"mean": float(arr.mean()), "std": float(arr.std())}
    stats.update({f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES})
    return stats


def run_metrics(outputs: Sequence[RequestOutput]) -> dict:
    """Metrics of one measured run; requests that failed are counted, not timed."""
    done = [o for o in outputs if o.finish_reason != "error" and o.token_times]
    if not done:
        raise ValueError("no request completed: " + "; ".join(f"{o.request_id}: {o.error}" for o in outputs[:3]))
    timings = [request_timing(o) for o in done]
    start = min(o.arrival_time for o in done)
    duration = max(o.token_times[-1] for o in done) - start
    out_tokens = sum(t.output_len for t in timings)
    in_tokens = sum(t.prompt_len for t in timings)
    return {
        "ttft_ms": distribution([t.ttft_ms for t in timings]),
        "tpot_ms": distribution([t.tpot_ms for t in timings if t.tpot_ms is not None]),
        "itl_ms": distribution([gap for t in timings for gap in t.itl_ms]),
        "e2el_ms": distribution([t.e2el_ms for t in timings]),
        "output_throughput_tok_s": out_tokens / duration,
        "total_throughput_tok_s": (in_tokens + out_tokens) / duration,
        "request_throughput": len(done) / duration,
        "duration_s": duration,
        "num_requests": len(outputs),
        "num_failed": len(outputs) - len(done),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
    }


def pooled_metrics(runs: Sequence[Sequence[RequestOutput]]) -> dict:
    """Latency distributions over every request of every repeat; throughputs over the summed
    measured durations (repeats run one after another, so their durations add)."""
    per_run = [run_metrics(r) for r in runs]
    pooled = run_metrics([o for r in runs for o in r])
    duration = sum(m["duration_s"] for m in per_run)
    completed = pooled["num_requests"] - pooled["num_failed"]
    pooled["output_throughput_tok_s"] = pooled["total_output_tokens"] / duration
    pooled["total_throughput_tok_s"] = (pooled["total_input_tokens"] + pooled["total_output_tokens"]) / duration
    pooled["request_throughput"] = completed / duration
    pooled["duration_s"] = duration
    return pooled


def headline(metrics: dict, key: str) -> float:
    """Look up 'name' or 'name.stat' in a metrics dict."""
    name, _, stat = key.partition(".")
    value = metrics[name]
    return float(value[stat] if stat else value)


def bootstrap_ci(
    samples: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `statistic`; None with fewer than two samples."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, arr.size, size=(resamples, arr.size))
    stats = np.apply_along_axis(statistic, 1, arr[picks])
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def repeat_cis(per_repeat: Sequence[dict]) -> dict[str, list[float] | None]:
    """95% bootstrap CI of the mean over repeats, for each headline figure."""
    cis = {}
    for key in HEADLINE:
        ci = bootstrap_ci([headline(m, key) for m in per_repeat])
        cis[key] = list(ci) if ci else None
    return cis
