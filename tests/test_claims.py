"""The claims table: each declared claim against the cells of its experiment, with an interval and a verdict."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from harness.experiment import ClaimSpec
from harness.report.claims import FAILS, HOLDS, NOT_HERE, NOT_YET, PARTLY, check, check_all, declared_experiments
from harness.report.ratio import Figure, figure, ratio
from harness.report.rows import load_tables
from tests.report_rows import result, write_table

ROOT = Path(__file__).resolve().parents[1]

KV = ClaimSpec(id="kv-1", claim="10-100x faster token generation", source="002", metric="tpot_ms.mean",
               better="lower", treatment={"technique.kv_cache": "paged"}, baseline={"technique.kv_cache": "none"},
               low=10, high=100)  # fmt: skip


def rows_of(tmp_path, results):
    return load_tables([write_table(tmp_path / "results.jsonl", results)])


def test_a_ratio_claim_pairs_cells_at_equal_lengths_and_holds_when_every_pair_is_in_range(tmp_path):
    rows = rows_of(tmp_path, [
        result("kv_cache", {"kv_cache": "none"}, 1.0, 900.0, input_len=512),
        result("kv_cache", {"kv_cache": "paged"}, 30.0, 30.0, input_len=512),
        result("kv_cache", {"kv_cache": "none"}, 1.5, 400.0, input_len=128),
        result("kv_cache", {"kv_cache": "paged"}, 30.0, 25.0, input_len=128),
    ])  # fmt: skip
    checked = check("kv_cache", KV, rows)

    assert [m.figure.value for m in checked.measurements] == pytest.approx([900 / 30, 400 / 25])
    assert [m.cells[1].endswith(f"in={n}") for m, n in zip(checked.measurements, (512, 128))] == [True, True]
    assert checked.verdict == HOLDS and checked.devices == ["cpu: Test CPU (2/2 cores)"]


def test_out_of_range_is_does_not_hold_unless_the_interval_reaches_the_range(tmp_path):
    far = rows_of(tmp_path / "a", [result("kv_cache", {"kv_cache": "none"}, 1, 50.0),
                                   result("kv_cache", {"kv_cache": "paged"}, 1, 30.0)])  # 1.67x, tight
    assert check("kv_cache", KV, far).verdict == FAILS
    noisy = rows_of(tmp_path / "b", [result("kv_cache", {"kv_cache": "none"}, 1, 260.0, cv=0.3, n=2),
                                     result("kv_cache", {"kv_cache": "paged"}, 1, 30.0, cv=0.3, n=2)])  # 8.7x, wide
    checked = check("kv_cache", KV, noisy)
    assert checked.measurements[0].figure.high > 10 > checked.measurements[0].figure.value
    assert checked.verdict == PARTLY


def test_a_skipped_treatment_is_not_measurable_with_its_reason_and_no_rows_is_not_measured_yet(tmp_path):
    rows = rows_of(tmp_path, [result("kv_cache", {"kv_cache": "none"}, 1, 900.0),
                              result("kv_cache", {"kv_cache": "paged"}, 0, 0, status="skipped",
                                     reason="engine 'x' does not support kv_cache=paged")])  # fmt: skip
    checked = check("kv_cache", KV, rows)
    assert checked.verdict == NOT_HERE and "does not support kv_cache=paged" in checked.reason
    assert check("other", KV, rows).verdict == NOT_YET


def test_the_ratio_interval_is_the_log_scale_t_interval_of_both_cells():
    top, bottom = Figure(30.0, n=3, cv=0.05), Figure(900.0, n=5, cv=0.1)
    r = ratio(bottom, top)
    va, vb = 0.1**2 / 5, 0.05**2 / 3
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 2)
    from scipy import stats

    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (r.value, r.low, r.high) == pytest.approx((30.0, 30 * math.exp(-half), 30 * math.exp(half)))
    assert ratio(Figure(8.0), Figure(2.0)) == Figure(4.0)  # exact figures (byte sizes) give an exact ratio
    assert ratio(Figure(8.0, n=1), Figure(2.0, n=3, cv=0.1)).low is None  # one repeat: no interval


def test_a_figure_reads_the_interval_block_of_its_metric(tmp_path):
    [row] = rows_of(tmp_path, [result("kv_cache", {"kv_cache": "none"}, 10.0, 100.0, cv=0.04)])
    assert figure(row, "output_throughput_tok_s") == Figure(10.0, 9.0, 11.0, n=3, cv=0.04)
    assert figure(row, "engine_stats.nothing") is None


def test_best_draft_length_and_value_claims(tmp_path):
    spec_rows = [result("speculation", {"spec": "ngram", "spec_k": k}, tok_s, 10.0, cv=0.01,
                        extra={"engine_stats": {"speculation": {"acceptance_rate": rate}}})
                 for k, tok_s, rate in ((2, 40.0, 0.6), (4, 55.0, 0.5), (6, 70.0, 0.45), (8, 52.0, 0.4))]  # fmt: skip
    rows = rows_of(tmp_path, spec_rows)
    best = ClaimSpec(id="sd-3", claim="best k is 5-8", kind="best", metric="output_throughput_tok_s",
                     treatment={"technique.spec": "ngram"}, over="technique.spec_k", low=5, high=8)  # fmt: skip
    checked = check("speculation", best, rows)
    assert checked.measurements[0].figure.value == 6 and checked.verdict == HOLDS
    acceptance = ClaimSpec(id="sd-4", claim=">= 70% acceptance", kind="value", low=0.7,
                           metric="spec.acceptance_rate", treatment={"technique.spec": "ngram"})
    assert check("speculation", acceptance, rows).verdict == FAILS


def test_a_gate_claim_reads_the_quality_gate(tmp_path):
    rows = rows_of(tmp_path, [result("quantization", {"quant": "int8"}, 10, 10,
                                     extra={"accuracy": {"tasks": {}, "gate": {"status": "pass"}}})])  # fmt: skip
    gate = ClaimSpec(id="q-2", claim="<1% accuracy loss", kind="gate", metric="accuracy.gate",
                     treatment={"technique.quant": "int8"})
    assert check("quantization", gate, rows).verdict == HOLDS
    without = rows_of(tmp_path / "b", [result("quantization", {"quant": "int8"}, 10, 10)])
    assert check("quantization", gate, without).verdict == NOT_HERE


def test_every_experiment_declares_seed_claims_with_a_source():
    experiments = declared_experiments()
    assert {"kv_cache", "paged_kv", "batching", "prefix_cache", "attention", "peers", "model_size", "speculation",
            "quantization", "graphs"} <= set(experiments)  # fmt: skip
    for name, exp in experiments.items():
        assert exp.name == name and exp.claims, name
        assert all(c.source and c.claim for c in exp.claims), name
    checks = check_all([], experiments, every=True)
    assert {c.verdict for c in checks} <= {NOT_YET, NOT_HERE}


def test_a_claim_without_selectors_is_refused():
    with pytest.raises(ValueError, match="needs treatment and baseline"):
        ClaimSpec(id="x", claim="y", treatment={"a": 1})


def test_each_round_is_compared_with_its_own_baseline(tmp_path):
    rounds = [result("kv_cache", {"kv_cache": kv}, 1, tpot) for kv, tpot in (("none", 900.0), ("paged", 30.0))]
    again = [{**r, "sweep_id": "round-2", "config_hash": r["config_hash"]} for r in
             (result("kv_cache", {"kv_cache": kv}, 1, tpot) for kv, tpot in (("none", 600.0), ("paged", 30.0)))]  # fmt: skip
    checked = check("kv_cache", KV, rows_of(tmp_path, rounds + again))
    assert [m.figure.value for m in checked.measurements] == pytest.approx([30.0, 20.0])


def test_every_seed_claim_is_declared_by_an_experiment_or_listed_with_why_not():
    seed = (ROOT.parent / "shared" / "notes" / "seed-claims.md")
    seed = seed if seed.is_file() else Path("/work/shared/notes/seed-claims.md")
    if not seed.is_file():
        pytest.skip("the seed claims table is not beside this checkout")
    ids = set(re.findall(r"^\| ([a-z]+-\d) \|", seed.read_text(), flags=re.M))
    checks = check_all([], declared_experiments(), every=True)
    assert ids - {c.spec.id for c in checks} == set()
    assert all(c.reason for c in checks if c.experiment == "no experiment")
