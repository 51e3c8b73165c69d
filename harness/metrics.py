"""Latency and throughput metrics, defined as vLLM's benchmark defines them.

Per request, from the engine's per-token timestamps:
- TTFT  = time of the first generated token - arrival time
- E2EL  = time of the last generated token - arrival time
- TPOT  = (E2EL - TTFT) / (output tokens - 1), for requests with more than one output token
- ITL   = every gap between consecutive token *events*, pooled over all requests. Tokens that reach
          the host together (one engine step that yields several tokens, one HTTP chunk carrying
          several) share one timestamp and form one event; the zero gaps inside an event are not
          ITLs (vLLM's serving benchmark appends one ITL per chunk). TPOT is unaffected.
The arrival time is the request's `arrival_time` from the engine: when it was submitted.
Per run (one repeat): duration = last token of any request - first arrival;
output throughput = output tokens / duration; total throughput = (input + output) / duration;
request throughput = requests / duration.
Serving (an SLO given): a request is good when it completed and meets every SLO that is set
(TTFT, TPOT, E2EL <= their limits; a one-token request has no TPOT and passes that one);
goodput = good requests / duration, goodput_fraction = good requests / requests of the run.
Over repeats: latency distributions pool every request; the headline figures (HEADLINE) are means
of per-repeat values, each with a Student-t 95% interval of that same mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.base import RequestOutput

PERCENTILES = (50, 90, 95, 99)
HEADLINE = ("output_throughput_tok_s", "ttft_ms.mean", "tpot_ms.mean", "e2el_ms.mean")
THROUGHPUTS = ("output_throughput_tok_s", "total_throughput_tok_s", "request_throughput")
GOODPUT = ("goodput_req_s", "goodput_fraction")  # serving: per repeat, then their mean
CONFIDENCE = 0.95
WIDE_BELOW_N = 3  # t_{0.975,1} = 12.7: an interval from two repeats is valid but very wide
NOISY_CV = 0.05  # MLPerf-style stability check: repeats spread more than 5% around their mean


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
    itl = [(b - a) * 1e3 for a, b in zip(times, times[1:]) if b != a]  # between events, not within one
    return RequestTiming(out.prompt_len, n, ttft, e2el, tpot, itl)


def distribution(values: Sequence[float]) -> dict[str, float]:
    """mean, std and percentiles; NaN for an empty sample (e.g. TPOT when every output is 1 token)."""
    if len(values) == 0:
        return {key: float("nan") for key in ("mean", "std", *(f"p{p}" for p in PERCENTILES))}
    arr = np.asarray(values, dtype=np.float64)
    stats = {"mean": float(arr.mean()), "std": float(arr.std())}
    stats.update({f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES})
    return stats


def is_good(t: RequestTiming, slo: Any) -> bool:
    """Whether a completed request meets every SLO set on `slo` (ttft_ms, tpot_ms, e2el_ms; None = not set)."""
    limits = ((t.ttft_ms, slo.ttft_ms), (t.tpot_ms, slo.tpot_ms), (t.e2el_ms, slo.e2el_ms))
    return all(limit is None or value is None or value <= limit for value, limit in limits)


def run_metrics(outputs: Sequence[RequestOutput], slo: Any = None) -> dict:
    """Metrics of one measured run; requests that failed are counted, not timed (and are never good).
    With `slo` (an object with ttft_ms, tpot_ms, e2el_ms), also goodput."""
    done = [o for o in outputs if o.finish_reason != "error" and o.token_times]
    if not done:
        raise ValueError("no request completed: " + "; ".join(f"{o.request_id}: {o.error}" for o in outputs[:3]))
    timings = [request_timing(o) for o in done]
    duration = run_duration(done)
    out_tokens = sum(t.output_len for t in timings)
    in_tokens = sum(t.prompt_len for t in timings)
    goodput = {}
    if slo is not None:
        good = sum(is_good(t, slo) for t in timings)
        goodput = {"goodput_req_s": good / duration, "goodput_fraction": good / len(outputs), "num_good": good}
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
        **goodput,
    }


def run_duration(outputs: Sequence[RequestOutput]) -> float:
    """First arrival to last token of the requests that produced tokens (0.0 if none did)."""
    done = [o for o in outputs if o.token_times]
    return max(o.token_times[-1] for o in done) - min(o.arrival_time for o in done) if done else 0.0


def pooled_metrics(runs: Sequence[Sequence[RequestOutput]], slo: Any = None) -> dict:
    """Latency distributions over every request of every repeat; throughputs (goodput too) are the
    mean of per-repeat values, the quantity their interval describes (see repeat_cis), and
    duration_s is the total measured time (repeats run one after another)."""
    per_run = [run_metrics(r, slo) for r in runs]
    pooled = run_metrics([o for r in runs for o in r], slo)
    for key in (*THROUGHPUTS, *(GOODPUT if slo is not None else ())):
        pooled[key] = float(np.mean([m[key] for m in per_run]))
    for key in HEADLINE:  # a latency mean: the mean of per-repeat means (equal counts: the pooled mean)
        name, _, stat = key.partition(".")
        if stat:
            pooled[name][stat] = float(np.mean([headline(m, key) for m in per_run]))
    pooled["duration_s"] = sum(m["duration_s"] for m in per_run)
    return pooled


def headline(metrics: dict, key: str) -> float:
    """Look up 'name' or 'name.stat' in a metrics dict."""
    name, _, stat = key.partition(".")
    value = metrics[name]
    return float(value[stat] if stat else value)


def student_t_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """mean ± t_{(1+c)/2, n-1} · s/√n over independent repeats, with the sample's std and CV.

    A percentile bootstrap over 3-5 repeats covers the mean far less often than it claims
    (74% at n=3, see experiments/ci_coverage.py); the t interval is exact for normal repeats.
    `low`/`high` are None with one sample; `warning` says when the interval is wide or noisy.
    """
    arr = np.asarray(samples, dtype=np.float64)
    n = int(arr.size)
    mean = float(arr.mean()) if n else float("nan")
    block: dict = {"n": n, "method": "student-t", "mean": mean, "low": None, "high": None, "std": None,
                   "cv": None, "warning": None}  # fmt: skip
    if n < 2 or not np.isfinite(arr).all():
        block["warning"] = f"{n} repeat(s): no interval (needs >= 2)" if n < 2 else "non-finite values: no interval"
        return block
    from scipy.stats import t  # imported here: scipy.stats costs about a second to import

    std = float(arr.std(ddof=1))
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * std / np.sqrt(n)
    cv = std / abs(mean) if mean else float("nan")
    block.update(low=mean - half, high=mean + half, std=std, cv=cv)
    warnings = []
    if n < WIDE_BELOW_N:
        warnings.append(f"wide interval: only {n} repeats")
    if cv > NOISY_CV:
        warnings.append(f"noisy: CV {cv:.1%} > {NOISY_CV:.0%}")
    block["warning"] = "; ".join(warnings) or None
    return block


def repeat_cis(per_repeat: Sequence[dict]) -> dict[str, dict]:
    """Student-t 95% interval of the mean over repeats, for each headline figure (and goodput when
    measured); its `mean` is the figure pooled_metrics reports."""
    keys = HEADLINE + (("goodput_req_s",) if per_repeat and "goodput_req_s" in per_repeat[0] else ())
    return {key: student_t_interval([headline(m, key) for m in per_repeat]) for key in keys}
