"""The sweep report: speedups against a baseline, reasons for cells that did not run, charts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engines.environment import code_version
from harness import record
from harness.report import load_results, main, pick_baseline, plot, speedups, summarize

NO_CACHE, PAGED = "hf/smollm2-135m/latency/kv_cache=none", "own/smollm2-135m/latency/kv_cache=paged"
CONTIGUOUS, TRITON = "own/smollm2-135m/latency/kv_cache=contiguous", "own/smollm2-135m/latency/attention=triton"
CODE = code_version()


def result(cell: str, status: str = "ok", tok_s: float = 0.0, e2e_mean: float = 0.0, reason: str | None = None,
           n: int = 5, cv: float = 0.01) -> dict:
    engine, model, scenario, technique = cell.split("/")
    key, value = technique.split("=")
    out = {"cell": cell, "status": status, "reason": reason, "config_hash": f"h-{cell}", "sweep_id": "s1",
           "code_version": CODE,
           "config": {"engine": {"name": engine}, "model": {"name": model}, "scenario": {"name": scenario}},
           "technique_applied": {key: value}}  # fmt: skip
    if status == "ok":
        out["metrics"] = {"ttft_ms": {"p50": e2e_mean / 10}, "tpot_ms": {"mean": e2e_mean / 40},
                          "itl_ms": {"p50": e2e_mean / 41}, "e2el_ms": {"p50": e2e_mean * 0.98, "mean": e2e_mean},
                          "output_throughput_tok_s": tok_s, "peak_memory_bytes": 612_345_678}  # fmt: skip
        out["ci95"] = {key: {"n": n, "method": "student-t", "mean": 1.0, "low": 0.9, "high": 1.1, "std": cv,
                             "cv": cv, "warning": None} for key in ("ttft_ms.mean", "tpot_ms.mean", "e2el_ms.mean")}
        out["ci95"]["output_throughput_tok_s"] = {"n": n, "method": "student-t", "mean": tok_s, "low": tok_s * 0.95,
                                                  "high": tok_s * 1.04, "std": tok_s * cv, "cv": cv, "warning": None}
    return out


def write_table(tmp_path: Path, results: list[dict]) -> Path:
    table = tmp_path / record.TABLE_NAME
    for res in results:
        record.append_row(table, record.table_row(res, tmp_path / res["cell"] / "result.json"))
    return table


def line_of(text: str, cell: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith(cell + " ")]
    return line


@pytest.fixture
def sweep(tmp_path) -> Path:
    return write_table(tmp_path, [
        result(NO_CACHE, "failed", reason="RuntimeError: out of memory\nTraceback (most recent call last): ..."),
        result(CONTIGUOUS, tok_s=12.0, e2e_mean=900.0),
        result(PAGED, tok_s=30.0, e2e_mean=300.0),
        result(TRITON, "skipped", reason="attention=triton needs a CUDA device"),
    ])  # fmt: skip


def test_speedups_are_throughput_ratio_and_inverse_latency_ratio_vs_the_first_ok_cell(sweep):
    df = load_results(sweep.parent)
    rows = df.to_dict("records")
    base = rows[pick_baseline(rows)]

    assert base["cell"] == CONTIGUOUS  # the failed first cell cannot be the baseline
    assert speedups(rows[2], base) == pytest.approx((30.0 / 12.0, 900.0 / 300.0))
    assert speedups(base, base) == (1.0, 1.0)
    text = summarize(df)
    assert line_of(text, PAGED).split()[-2:] == ["2.50x", "3.00x"]
    assert line_of(text, CONTIGUOUS).split()[-3:] == ["1.00x", "1.00x", "baseline"]
    assert f"speedups vs baseline {CONTIGUOUS}" in text


def test_a_named_baseline_changes_every_ratio(sweep):
    text = summarize(load_results(sweep), baseline=PAGED)

    assert line_of(text, CONTIGUOUS).split()[-2:] == ["0.40x", "0.33x"]
    assert line_of(text, PAGED).split()[-3:] == ["1.00x", "1.00x", "baseline"]


def test_failed_and_skipped_cells_show_their_reason_and_no_numbers(sweep):
    text = summarize(load_results(sweep))

    failed = line_of(text, NO_CACHE)
    assert failed.split()[1] == "failed" and failed.endswith("RuntimeError: out of memory")
    assert "Traceback" not in text  # first line of the reason only
    skipped = line_of(text, TRITON)
    assert skipped.split()[1] == "skipped" and skipped.endswith("attention=triton needs a CUDA device")
    assert "x " not in skipped and skipped.split()[2:11] == ["-"] * 9


def test_each_ok_cell_shows_throughput_with_its_ci_latencies_and_memory(sweep):
    text = summarize(load_results(sweep))
    header = text.splitlines()[0]

    for name in ("TTFT p50 ms", "TPOT mean ms", "ITL p50 ms", "E2E p50 ms", "out tok/s [95% CI]", "CV", "peak MB"):
        assert name in header
    line = line_of(text, PAGED)
    assert "30.0 [28.5, 31.2]  1.0%" in line
    assert line.split()[2:6] == ["30.0", "7.5", "7.3", "294.0"]
    assert "612.3" in line
    status_at = header.index("status")  # fixed width: every row's status starts under its header
    assert [row[status_at:].split()[0] for row in text.splitlines()[2:6]] == ["failed", "ok", "ok", "skipped"]


def test_an_unknown_baseline_is_an_error_naming_the_ok_cells(sweep):
    with pytest.raises(ValueError, match=f"ok cells: {CONTIGUOUS}, {PAGED}"):
        summarize(load_results(sweep), baseline=NO_CACHE)


def test_a_torn_last_line_is_skipped(sweep):
    with open(sweep, "a") as f:
        f.write('{"cell": "half a ro')

    assert list(load_results(sweep)["cell"]) == [NO_CACHE, CONTIGUOUS, PAGED, TRITON]


def test_plots_are_written_for_ok_cells(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    paths = plot(load_results(sweep), tmp_path / "plots")

    assert [p.name for p in paths] == ["throughput.png", "latency.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_without_matplotlib_plots_are_skipped_with_a_message(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)

    assert plot(load_results(sweep), tmp_path / "plots") == []
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()


def test_the_cli_prints_the_table_and_reports_a_bad_baseline(sweep, capsys):
    assert main([str(sweep.parent), "--baseline", PAGED]) == 0
    assert "0.40x" in line_of(capsys.readouterr().out, CONTIGUOUS)
    assert main([str(sweep), "--baseline", "nope"]) == 2
    assert "baseline 'nope' is not an ok cell" in capsys.readouterr().err


def test_a_single_cell_is_printed_without_speedup_columns():
    import pandas as pd

    from harness.report import summarize

    text = summarize(pd.DataFrame([{"cell": "hf/m/latency/fixed", "status": "ok", "output_throughput_tok_s": 5.0}]))
    assert "hf/m/latency/fixed" in text and "tok/s x" not in text and "baseline" not in text


def test_noisy_repeats_and_too_few_repeats_are_flagged_in_the_printed_table(tmp_path):
    noisy = result(PAGED, tok_s=30.0, e2e_mean=300.0, cv=0.08)
    noisy["ci95"]["ttft_ms.mean"]["cv"] = 0.02
    text = summarize(load_results(write_table(tmp_path, [
        result(CONTIGUOUS, tok_s=12.0, e2e_mean=900.0, n=2), noisy, result(NO_CACHE, tok_s=5.0, e2e_mean=9.0, n=1),
    ])))  # fmt: skip

    assert line_of(text, CONTIGUOUS).endswith("baseline; wide CI: 2 repeats")
    paged = line_of(text, PAGED)
    assert "8.0%!" in paged and paged.endswith("noisy, CV > 5%: out tok/s 8.0%, TPOT 8.0%, E2E 8.0%")
    assert line_of(text, NO_CACHE).endswith("1 repeat: no CI")
    assert "'!' above 5%: a noisy machine" in text


def test_tables_written_before_interval_blocks_still_show_their_ci(tmp_path):
    old = result(PAGED, tok_s=30.0, e2e_mean=300.0)
    old["ci95"] = {"output_throughput_tok_s": [28.5, 31.2], "ttft_ms.mean": None}

    line = line_of(summarize(load_results(write_table(tmp_path, [old]))), PAGED)
    assert line.split()[6:10] == ["30.0", "[28.5,", "31.2]", "-"]  # no CV recorded then


def test_a_result_measured_by_other_code_is_marked_stale(tmp_path):
    old = {**result(PAGED, tok_s=30.0, e2e_mean=300.0), "code_version": "0.0.1+0123456789ab"}
    text = summarize(load_results(write_table(tmp_path, [result(CONTIGUOUS, tok_s=12.0, e2e_mean=900.0), old])))
    assert "stale: measured by code 0.0.1+0123456789ab" in line_of(text, PAGED)
    assert "stale" not in line_of(text, CONTIGUOUS)


def test_evaluated_cells_show_their_accuracy_and_quality_gate_in_the_printed_table(tmp_path):
    hf, own = result(CONTIGUOUS, tok_s=12.0, e2e_mean=900.0), result(PAGED, tok_s=30.0, e2e_mean=300.0)
    hf["accuracy"] = {"tasks": {"mmlu": {"metrics": {"acc,none": {"value": 0.3070, "stderr": 0.0432}}}},
                      "gate": {"status": "no_baseline"}}  # fmt: skip
    own["accuracy"] = {"tasks": {"mmlu": {"metrics": {"acc,none": {"value": 0.2982, "stderr": 0.0430}}}},
                       "gate": {"status": "fail"}}  # fmt: skip
    text = summarize(load_results(write_table(tmp_path, [hf, own, result(TRITON, "skipped", reason="no GPU")])))
    header = text.splitlines()[0]
    assert "mmlu acc" in header and "gate" in header
    assert "0.307±0.043" in line_of(text, CONTIGUOUS) and "no_baseline" in line_of(text, CONTIGUOUS)
    assert "0.298±0.043" in line_of(text, PAGED) and " fail " in line_of(text, PAGED) + " "
    assert "mmlu acc" not in summarize(load_results(write_table(tmp_path / "plain", [result(PAGED, tok_s=1.0)])))
