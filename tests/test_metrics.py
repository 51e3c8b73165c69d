"""Metric formulas (vLLM's definitions) on hand-made timestamps, and intervals that cover what they claim."""

import importlib.util
import math
from pathlib import Path

import pytest

from engines.base import RequestOutput
from harness.metrics import distribution, pooled_metrics, repeat_cis, request_timing, run_metrics, student_t_interval


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


def test_pooled_throughput_is_the_mean_of_per_repeat_throughputs_and_durations_add():
    r1 = [output("a", 0.0, [1.0, 2.0])]  # 2 tokens in 2 s: 1 tok/s
    r2 = [output("b", 10.0, [11.0, 12.0, 13.0, 14.0, 14.5, 15.0])]  # 6 tokens in 5 s: 1.2 tok/s
    m = pooled_metrics([r1, r2])
    assert m["output_throughput_tok_s"] == pytest.approx((1.0 + 1.2) / 2)  # not 8 tokens / 7 s
    assert m["request_throughput"] == pytest.approx((0.5 + 0.2) / 2)
    assert m["duration_s"] == pytest.approx(7.0)
    assert m["ttft_ms"]["mean"] == pytest.approx(1000.0)


def test_student_t_interval_is_mean_plus_minus_t_times_standard_error():
    block = student_t_interval([10.0, 11.0, 9.0, 10.5, 9.5])
    s = math.sqrt(0.625)  # sample std (n - 1)
    half = 2.7764451051977987 * s / math.sqrt(5)  # t_{0.975, 4}
    assert block["n"] == 5 and block["method"] == "student-t"
    assert block["mean"] == pytest.approx(10.0) and block["std"] == pytest.approx(s)
    assert (block["low"], block["high"]) == pytest.approx((10.0 - half, 10.0 + half))
    assert block["cv"] == pytest.approx(s / 10.0) and block["warning"] == "noisy: CV 7.9% > 5%"


def test_two_repeats_give_a_wide_interval_with_a_warning_and_one_gives_none():
    two = student_t_interval([100.0, 101.0])
    assert two["low"] < 100.0 and two["high"] > 101.0 and two["warning"] == "wide interval: only 2 repeats"
    one = student_t_interval([100.0])
    assert one["mean"] == 100.0 and one["low"] is one["high"] is one["std"] is None
    assert "no interval" in one["warning"]
    quiet = student_t_interval([100.0, 100.5, 99.5, 100.0])
    assert quiet["warning"] is None and quiet["cv"] < 0.05


def test_repeat_cis_describe_the_headline_figures_pooled_metrics_reports():
    runs = [[output("a", 0.0, [0.1 * k, 0.2 * k, 0.3 * k])] for k in (1, 2, 3)]
    cis = repeat_cis([run_metrics(r) for r in runs])
    pooled = pooled_metrics(runs)
    assert set(cis) == {"output_throughput_tok_s", "ttft_ms.mean", "tpot_ms.mean", "e2el_ms.mean"}
    assert cis["output_throughput_tok_s"]["mean"] == pytest.approx(pooled["output_throughput_tok_s"])
    assert cis["ttft_ms.mean"]["mean"] == pytest.approx(pooled["ttft_ms"]["mean"]) == pytest.approx(200.0)
    assert cis["ttft_ms.mean"]["low"] < 200.0 < cis["ttft_ms.mean"]["high"]


def test_student_t_covers_the_true_mean_about_95_percent_of_the_time_where_the_bootstrap_did_not():
    path = Path(__file__).resolve().parents[1] / "experiments" / "ci_coverage.py"
    spec = importlib.util.spec_from_file_location("ci_coverage", path)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)

    results = experiment.coverage(ns=(2, 3, 5, 10), trials=2000, seed=0)
    print(experiment.table(results, 2000))

    for n, covered in results.items():
        assert covered["student-t"] >= 0.93, (n, covered)
    assert results[3]["bootstrap"] < 0.80  # the old method's shortfall this replaces
