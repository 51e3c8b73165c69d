"""The serving scenario: seeded arrival schedules, goodput and ITL between events, own's serve() loop
(same tokens as generate, real spread-out arrivals, the concurrency limit), engines without a serving
loop skipped before they load, and a rate sweep through the CLI that names the highest rate meeting
the SLOs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from engines import create_engine
from engines.base import Arrivals, ModelSpec, Request, RequestOutput, SamplingParams, Technique
from harness.arrivals import arrival_offsets, schedule_hash
from harness.config import ArrivalProcess, ConfigError, load, register
from harness.metrics import pooled_metrics, request_timing, run_metrics
from harness.report import slo_rates, slo_summary
from harness.runner import run_cell, semantic_config

CONF = Path(__file__).resolve().parents[1] / "conf"
register()
TINY = {
    "model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 96,
    "eos_token_id": 2, "bos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip


# --- arrival schedules ---------------------------------------------------------------------------------


def gaps(offsets):
    return np.diff(np.asarray(offsets))


def test_poisson_schedule_has_the_asked_mean_rate_and_exponential_gaps():
    offsets = arrival_offsets(20_000, 5.0, ArrivalProcess.poisson, 1.0, seed=0, index=0)
    assert offsets[0] == 0.0 and all(b >= a for a, b in zip(offsets, offsets[1:]))
    g = gaps(offsets)
    assert g.mean() == pytest.approx(0.2, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV 1


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_keeps_the_rate_and_sets_the_spread(burstiness):
    g = gaps(arrival_offsets(20_000, 5.0, ArrivalProcess.gamma, burstiness, seed=0, index=0))
    assert g.mean() == pytest.approx(0.2, rel=0.05)  # scale 1/(rate*k): the mean gap stays 1/rate
    assert g.std() / g.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.08)  # gamma: CV = 1/sqrt(k)


def test_schedules_are_seeded_per_run_and_inf_is_all_at_once():
    a = arrival_offsets(50, 2.0, ArrivalProcess.poisson, 1.0, seed=3, index=0)
    assert a == arrival_offsets(50, 2.0, ArrivalProcess.poisson, 1.0, seed=3, index=0)
    assert schedule_hash(a) == schedule_hash(list(a))
    assert schedule_hash(a) != schedule_hash(arrival_offsets(50, 2.0, ArrivalProcess.poisson, 1.0, seed=3, index=1))
    assert schedule_hash(a) != schedule_hash(arrival_offsets(50, 2.0, ArrivalProcess.poisson, 1.0, seed=4, index=0))
    assert arrival_offsets(5, math.inf, ArrivalProcess.gamma, 0.5, seed=0, index=0) == [0.0] * 5


# --- config --------------------------------------------------------------------------------------------


def compose_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_serving_config_loads_typed_with_slos():
    config = load(compose_config("scenario=serving", "scenario.request_rate=inf", "scenario.arrival=gamma",
                                 "scenario.burstiness=0.5", "scenario.slo.ttft_ms=200", "scenario.max_concurrency=4"))  # fmt: skip
    s = config.scenario
    assert math.isinf(s.request_rate) and s.arrival is ArrivalProcess.gamma and s.max_concurrency == 4
    assert s.slo.ttft_ms == 200.0 and s.slo.tpot_ms is None and s.slo.target == 0.9


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["scenario.request_rate=0"], "scenario.request_rate must be > 0"),
        (["scenario.burstiness=0.5"], "needs scenario.arrival=gamma"),
        (["scenario.warmup_requests=40", "scenario.cooldown_requests=24"], "leave none of num_requests=64"),
        (["scenario.slo.ttft_ms=-1"], "scenario.slo.ttft_ms must be > 0"),
        (["scenario.slo.target=1.5"], "scenario.slo.target must be in (0, 1]"),
        (["scenario.max_concurrency=0"], "scenario.max_concurrency must be >= 1"),
    ],
)
def test_bad_serving_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        load(compose_config("scenario=serving", *overrides))


def test_serving_keys_do_not_change_other_scenarios_hash():
    from omegaconf import OmegaConf

    def semantic(*o):
        return semantic_config(OmegaConf.to_container(compose_config(*o), resolve=True, enum_to_str=True))

    assert semantic("scenario=latency") == semantic("scenario=latency", "scenario.request_rate=3")
    assert "request_rate" not in semantic("scenario=throughput")["scenario"]
    assert semantic("scenario=serving") != semantic("scenario=serving", "scenario.request_rate=3")


# --- metrics: ITL between events, goodput --------------------------------------------------------------


def output(rid, arrival, times, error=False):
    return RequestOutput(rid, 8, [5] * len(times), list(times), arrival, "error" if error else "length")


def test_itl_is_between_events_and_tpot_counts_every_token():
    # 5 tokens: one at 1.0, three in one chunk at 1.1, one at 1.3 (arrival 0.9)
    t = request_timing(output("a", 0.9, [1.0, 1.1, 1.1, 1.1, 1.3]))
    assert t.itl_ms == pytest.approx([100.0, 200.0])  # no zero gaps inside the chunk
    assert t.ttft_ms == pytest.approx(100.0) and t.e2el_ms == pytest.approx(400.0)
    assert t.tpot_ms == pytest.approx(300.0 / 4)
    m = run_metrics([output("a", 0.9, [1.0, 1.1, 1.1, 1.1, 1.3]), output("b", 0.9, [1.2, 1.2])])
    assert m["itl_ms"]["p50"] > 0 and m["itl_ms"]["mean"] == pytest.approx(150.0)


def test_goodput_counts_requests_meeting_every_slo_over_the_duration():
    outs = [
        output("fast", 0.0, [0.05, 0.10, 0.15]),  # TTFT 50, TPOT 50, E2EL 150: good
        output("slow-first", 0.0, [0.30, 0.35]),  # TTFT 300: misses the TTFT SLO
        output("slow-decode", 0.5, [0.55, 0.75, 0.95]),  # TPOT 200: misses the TPOT SLO
        output("one-token", 1.0, [1.05]),  # no TPOT: passes that SLO; E2EL 50: good
        output("failed", 1.0, [], error=True),  # never good, but counted in the fraction
    ]
    slo = SimpleNamespace(ttft_ms=100.0, tpot_ms=100.0, e2el_ms=None)
    m = run_metrics(outs, slo)
    assert m["num_good"] == 2
    assert m["duration_s"] == pytest.approx(1.05)  # first arrival 0.0 to last token 1.05
    assert m["goodput_req_s"] == pytest.approx(2 / 1.05)
    assert m["goodput_fraction"] == pytest.approx(2 / 5)
    assert "goodput_req_s" not in run_metrics(outs[:4])  # no SLO given: not a serving run
    everything = run_metrics(outs, SimpleNamespace(ttft_ms=None, tpot_ms=None, e2el_ms=None))
    assert everything["num_good"] == 4  # no SLO set: every completed request is good
    pooled = pooled_metrics([outs[:2], outs[2:4]], slo)  # per-repeat goodput, then the mean
    assert pooled["goodput_fraction"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert pooled["goodput_req_s"] == pytest.approx((1 / 0.35 + 1 / 0.55) / 2)


# --- own's serve() -------------------------------------------------------------------------------------


def tiny_own(**options):
    spec = ModelSpec("tiny", None, random_config=dict(TINY), seed=0)
    return create_engine("own", spec, Technique(), dict(kv_cache_bytes=1 << 22, **options), "cpu")


def reqs(n, max_tokens=6, prompt_len=8, vocab=300):
    rng = np.random.default_rng(0)
    return [Request(f"q{i}", rng.integers(3, vocab, size=prompt_len).tolist(),
                    SamplingParams(max_tokens=max_tokens, ignore_eos=True)) for i in range(n)]  # fmt: skip


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_dir):
    engine = create_engine("own", ModelSpec("smollm2", str(smollm2_dir)), Technique(), {}, "cpu")
    yield engine
    engine.close()


def test_serve_gives_the_greedy_tokens_of_generate(smollm2_engine):
    batch = reqs(4, max_tokens=6, vocab=49152)
    offline = smollm2_engine.generate(batch)
    served = smollm2_engine.serve(batch, Arrivals([0.0, 0.02, 0.05, 0.1]))
    assert [o.token_ids for o in served] == [o.token_ids for o in offline]
    assert all(len(o.token_ids) == 6 and o.finish_reason == "length" for o in served)
    assert smollm2_engine.is_idle()


def test_requests_arrive_spread_out_as_scheduled():
    engine = tiny_own()
    submitted = {}
    enqueue = engine.llm.enqueue

    def recording(request, error, index):  # when each request really reached the engine
        submitted[request.request_id] = time.perf_counter()
        return enqueue(request, error, index)

    engine.llm.enqueue = recording
    offsets = [0.0, 0.15, 0.3, 0.45, 0.6]
    start = time.perf_counter()
    outs = engine.serve(reqs(5, max_tokens=3), Arrivals(offsets))
    arrivals = [o.arrival_time for o in outs]
    assert np.diff(arrivals) == pytest.approx(np.diff(offsets), abs=0.03)
    assert arrivals[0] - start == pytest.approx(0.0, abs=0.03)
    for o, offset in zip(outs, offsets):
        assert submitted[o.request_id] >= start + offset  # never early
        assert submitted[o.request_id] - o.arrival_time < 0.1  # and late only by the step it waited for
        assert o.token_times[0] > submitted[o.request_id] and len(o.token_ids) == 3
    assert time.perf_counter() - start >= 0.6
    stats = engine.stats()
    assert stats["serve_submit_lag_ms_max"] < 100


def test_max_concurrency_is_never_exceeded_and_waiting_requests_arrive_when_a_slot_frees():
    engine = tiny_own(max_num_seqs=8)
    outs = engine.serve(reqs(6, max_tokens=4), Arrivals([0.0] * 6, max_concurrency=2))
    stats = engine.stats()
    assert stats["serve_peak_in_flight"] == 2 and stats["peak_running_seqs"] <= 2
    assert all(len(o.token_ids) == 4 for o in outs)
    ends = sorted(o.token_times[-1] for o in outs)
    later = sorted(o.arrival_time for o in outs)[2:]  # the four that waited for a slot
    assert later == pytest.approx(ends[:4], abs=1e-9)  # each arrived the moment a request finished
    # without a limit all six run together
    unlimited = tiny_own(max_num_seqs=8)
    unlimited.serve(reqs(6, max_tokens=4), Arrivals([0.0] * 6))
    assert unlimited.stats()["serve_peak_in_flight"] == 6


def test_a_bad_request_fails_alone_and_a_bad_schedule_is_refused():
    engine = tiny_own()
    batch = reqs(3, max_tokens=3)
    batch[1] = Request("bad", [999_999], SamplingParams(max_tokens=3))
    outs = engine.serve(batch, Arrivals([0.0, 0.01, 0.02]))
    assert [o.finish_reason for o in outs] == ["length", "error", "length"]
    assert "out of range" in outs[1].error and engine.is_idle()
    with pytest.raises(ValueError, match="one per request"):
        engine.serve(reqs(2), Arrivals([0.0]))
    with pytest.raises(ValueError, match="max_concurrency"):
        engine.serve(reqs(2), Arrivals([0.0, 0.0], max_concurrency=0))


# --- harness: skipped engines, the measured window, the report ----------------------------------------


def cell(tmp_path, *overrides):
    cfg = compose_config("tracker=none", f"store={tmp_path / 'store'}", *overrides)
    run_cell(cfg, tmp_path / "cell", tmp_path / "sweep", "sweep-1", 0)
    return json.loads((tmp_path / "cell" / "result.json").read_text())


def test_an_engine_without_a_serving_loop_is_skipped_before_it_loads(tmp_path):
    result = cell(tmp_path, "engine=hf", "scenario=serving", "scenario.num_requests=2")
    assert result["status"] == "skipped" and "has no serving loop" in result["reason"]
    assert not (tmp_path / "cell" / "worker.log").exists()  # no engine process was started


def test_a_serving_cell_measures_only_its_window_and_records_the_schedule(tmp_path):
    model = ("{model_type:llama,vocab_size:300,hidden_size:64,intermediate_size:128,num_hidden_layers:2,"
             "num_attention_heads:4,num_key_value_heads:2,max_position_embeddings:96,eos_token_id:2,bos_token_id:1}")
    result = cell(tmp_path, "engine=own", "isolation=none", "model.source=random", f"+model.architecture={model}",
                  "engine.kv_cache_bytes=4194304", "scenario=serving", "scenario.num_requests=8",
                  "scenario.request_rate=50", "scenario.warmup_requests=2", "scenario.cooldown_requests=1",
                  "scenario.slo.ttft_ms=10000", "workload.input_len.mean=8", "workload.output_len.mean=3", "threads=1")  # fmt: skip
    assert result["status"] == "ok", result["reason"]
    assert result["metrics"]["num_requests"] == 5 and [r["request_id"] for r in result["requests"]] == [
        f"r0-{i}" for i in range(2, 7)]
    assert result["metrics"]["goodput_fraction"] == 1.0 and "goodput_req_s" in result["ci95"]
    serving = result["serving"]
    assert serving["request_rate"] == 50 and serving["measured_requests"] == 5
    assert len(serving["schedules"]) == 1 and len(serving["schedules"][0]["hash"]) == 16
    assert "/serving/fixed/rate=50," in result["cell"]


def test_the_report_finds_the_highest_rate_meeting_the_slos():
    rows = []
    for cell_, rate, fraction in [("own/m/serving/fixed/rate=1", 1, 1.0), ("own/m/serving/fixed/rate=2", 2, 0.95),
                                  ("own/m/serving/fixed/rate=4", 4, 0.5), ("own/m/serving/fixed/rate=inf", "inf", 0.1),
                                  ("hf/m/serving/fixed/rate=1,kv_cache=none", 1, 0.2)]:  # fmt: skip
        rows.append({"cell": cell_, "status": "ok", "serving.request_rate": rate, "goodput_fraction": fraction,
                     "goodput_req_s": fraction * (rate if rate != "inf" else 10), "serving.slo.target": 0.9,
                     "serving.slo.text": "TTFT <= 100 ms"})  # fmt: skip
    df = pd.DataFrame(rows)
    found = {f["config"]: f for f in slo_rates(df)}
    assert found["own/m/serving/fixed"]["highest_rate"] == 2.0
    assert [r[0] for r in found["own/m/serving/fixed"]["rates"]] == [1.0, 2.0, 4.0, math.inf]
    assert found["hf/m/serving/fixed/kv_cache=none"]["highest_rate"] is None
    assert {f["config"]: f["highest_rate"] for f in slo_rates(df, target=0.99)}["own/m/serving/fixed"] == 1.0
    text = slo_summary(df)
    assert "highest rate meeting the SLOs: 2 req/s" in text and "rate    inf req/s" in text
    assert slo_summary(pd.DataFrame([{"cell": "x", "status": "ok"}])) == ""


@pytest.mark.slow
def test_a_rate_sweep_through_the_cli_prints_goodput_and_the_highest_rate_meeting_the_slo(tmp_path, smollm2_dir):
    cmd = [sys.executable, "-m", "harness.cli", "-m", "engine=own", "scenario=serving", "scenario.request_rate=2,8",
           "scenario.num_requests=6", "scenario.slo.ttft_ms=2000", "scenario.slo.tpot_ms=1000",
           "workload.input_len.mean=8", "workload.output_len.mean=4", "tracker=none", "threads=1",
           f"store={tmp_path / 'store'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / "sweep" / str(i) / "result.json").read_text()) for i in (0, 1)]
    assert [r["serving"]["request_rate"] for r in results] == [2, 8]
    assert all(r["status"] == "ok" and r["metrics"]["num_requests"] == 6 for r in results)
    # the 6 requests really were spread over the schedule: ~5 gaps of 1/rate
    spans = [r["serving"]["schedules"][0]["span_s"] for r in results]
    assert spans[0] > spans[1] > 0
    assert "goodput req/s" in proc.stdout and "Goodput per request rate" in proc.stdout
    assert "highest rate meeting the SLOs: " in proc.stdout


def test_a_rate_sweep_groups_cells_whose_options_hold_slashes():
    from harness.report import _without_rate

    url = "openai/m/serving/fixed/rate=4,base_url=http://127.0.0.1:8100/v1"
    assert _without_rate(url) == _without_rate(url.replace("rate=4", "rate=8")) == \
        "openai/m/serving/fixed/base_url=http://127.0.0.1:8100/v1"
    assert _without_rate("own/m/serving/fixed/rate=2") == "own/m/serving/fixed"
    assert _without_rate("own/m/serving/fixed/rate=2,max_concurrency=4") == "own/m/serving/fixed/max_concurrency=4"
