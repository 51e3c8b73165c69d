"""Metric formulas (vLLM's definitions) on hand-made timestamps."""

import math

import pytest

from engines.base import RequestOutput
from harness.metrics import bootstrap_ci, distribution, pooled_metrics, repeat_cis, request_timing, run_metrics


def output(rid: str, arrival: float, times: list[float], prompt_len: int = 10) -> RequestOutput:
    return RequestOutput(rid, prompt_len, list(range(len(times))), times, arrival, "length")


def test_ttft_e2el_tpot_and_itl_follow_vllm_definitions():
    t = request_timing(output("a", 1.0, [1.5, 1.7, 2.0, 2.1]))
    assert t.ttft_ms == pytest.approx(500.0)
    assert t.e2el_ms == pytest.approx(1100.0)
    assert t.tpot_ms == pytest.approx((1100.0 - 500.0) / 3)
    assert t.itl_ms == pytest.approx([200.0, 300.0, 100.0])


def test_single_token_request_has_no_tpot_and_no_itl():
    t = request_timing(output("a", 0.0, [0.25]))
    assert t.tpot_ms is None and t.itl_ms == []
    assert t.ttft_ms == t.e2el_ms == pytest.approx(250.0)


def test_run_throughput_uses_first_arrival_to_last_token():
    runs = [output("a", 0.0, [1.0, 2.0], prompt_len=5), output("b", 0.0, [1.0, 2.0, 3.0, 4.0], prompt_len=7)]
    m = run_metrics(runs)
    assert m["duration_s"] == pytest.approx(4.0)
    assert m["output_throughput_tok_s"] == pytest.approx(6 / 4.0)
    assert m["total_throughput_tok_s"] == pytest.approx((12 + 6) / 4.0)
    assert m["request_throughput"] == pytest.approx(0.5)
    # ITL pools every gap of every request: 1 gap from a, 3 from b, all 1000 ms
    assert m["itl_ms"]["mean"] == pytest.approx(1000.0) and m["itl_ms"]["std"] == pytest.approx(0.0)
    assert m["ttft_ms"]["p50"] == pytest.approx(1000.0)


def test_failed_requests_are_counted_not_timed():
    bad = RequestOutput("x", 0, [], [], 0.0, "error", error="empty prompt")
    m = run_metrics([output("a", 0.0, [1.0, 2.0]), bad])
    assert m["num_requests"] == 2 and m["num_failed"] == 1 and m["total_output_tokens"] == 2
    with pytest.raises(ValueError, match="empty prompt"):
        run_metrics([bad])


def test_distribution_percentiles_and_std():
    d = distribution([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d["mean"] == 3.0 and d["p50"] == 3.0 and d["p99"] == pytest.approx(4.96)
    assert d["std"] == pytest.approx(math.sqrt(2.0))
    assert all(math.isnan(v) for v in distribution([]).values())


def test_pooled_throughput_divides_tokens_by_summed_durations():
    r1 = [output("a", 0.0, [1.0, 2.0])]  # 2 tokens in 2 s
    r2 = [output("b", 10.0, [11.0, 12.0, 13.0, 14.0])]  # 4 tokens in 4 s
    m = pooled_metrics([r1, r2])
    assert m["output_throughput_tok_s"] == pytest.approx(6 / 6.0)
    assert m["ttft_ms"]["mean"] == pytest.approx(1000.0)


def test_bootstrap_ci_brackets_the_mean_and_needs_two_samples():
    lo, hi = bootstrap_ci([10.0, 11.0, 9.0, 10.5, 9.5])
    assert lo < 10.0 < hi and hi - lo < 2.0
    assert bootstrap_ci([3.0]) is None
    assert bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)


def test_repeat_cis_cover_every_headline_figure():
    runs = [run_metrics([output("a", 0.0, [0.1 * k, 0.2 * k, 0.3 * k])]) for k in (1, 2, 3)]
    cis = repeat_cis(runs)
    assert set(cis) == {"output_throughput_tok_s", "ttft_ms.mean", "tpot_ms.mean", "e2el_ms.mean"}
    lo, hi = cis["ttft_ms.mean"]
    assert 100.0 - 1e-9 <= lo <= hi <= 300.0 + 1e-9
