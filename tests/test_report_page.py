"""`infermatrix report RESULTS --out DIR`: a Markdown and an HTML page with figures and the claims table,
byte-identical when rebuilt from the same results."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.cli import main
from harness.report.figures import pareto_front
from tests.report_rows import result, write_table

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tables(tmp_path) -> list[Path]:
    kv = write_table(tmp_path / "kv" / "results.jsonl", [
        result("kv_cache", {"kv_cache": "none"}, 1.1, 950.0),
        result("kv_cache", {"kv_cache": "contiguous"}, 28.0, 35.0),
        result("kv_cache", {"kv_cache": "paged"}, 30.0, 33.0, engine="own"),
        result("kv_cache", {"kv_cache": "paged"}, 26.0, 38.0, engine="hf", status="skipped",
               reason="engine 'hf' does not support kv_cache=paged (supports: contiguous, none)"),
    ])  # fmt: skip
    spec = write_table(tmp_path / "spec" / "results.jsonl", [
        result("speculation", {"spec": "ngram", "spec_k": k}, 20.0 + k, 40.0 - k,
               extra={"engine_stats": {"speculation": {"acceptance_rate": 0.8 - 0.05 * k, "mean_accepted_length": 2.0}}})
        for k in (2, 4, 6)
    ])  # fmt: skip
    return [kv, spec]


def build(tables: list[Path], out: Path, env: dict | None = None) -> dict[str, bytes]:
    args = [str(t) for t in tables] + ["--out", str(out), "--title", "test report"]
    if env is None:
        assert main(args) == 0
    else:  # another interpreter with another hash seed: set and dict order must not leak into the files
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "report", *args], capture_output=True, text=True,
                              env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_rebuilding_from_the_same_results_gives_identical_files(tables, tmp_path):
    first = build(tables, tmp_path / "report")
    shutil.rmtree(tmp_path / "report")  # the same command again (the page names it), in a fresh interpreter
    again = build(tables, tmp_path / "report", env={"PYTHONHASHSEED": "12345"})

    assert {"report.md", "report.html", "figures/pareto.svg", "figures/speedups.svg", "figures/acceptance.svg",
            "figures/accuracy_memory_speed.svg"} <= set(first)  # fmt: skip
    changed = [name for name in first if first[name] != again.get(name)]
    assert not changed and set(first) == set(again)


def test_the_page_holds_the_claims_table_with_verdicts_and_each_figure(tables, tmp_path):
    files = build(tables, tmp_path / "out")
    md, page = files["report.md"].decode(), files["report.html"].decode()

    kv1 = [line for line in md.splitlines() if line.startswith("| kv-1: KV cache (paged)")]
    assert len(kv1) == 1 and "28.8x [" in kv1[0] and "| holds |" in kv1[0]  # 950 / 33 ms per token
    assert "not measured yet" not in md  # only the experiments in these tables
    assert "does not support kv_cache=paged" in md  # a skipped cell keeps its reason
    assert "![Speedups over baselines](figures/speedups.svg)" in md
    assert page.count("<svg") == 4 and "<img" not in page and "http" not in page.split("<svg")[0]
    assert "<?xml" not in page  # SVGs are inlined without their prolog


def test_all_claims_lists_experiments_not_run_yet(tables, tmp_path):
    assert main([str(tables[0]), "--out", str(tmp_path / "o"), "--all-claims"]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "q-3: FP32 -> INT8 reduces memory 4x (quantization)" in md and "not measured yet" in md


def test_the_pareto_front_keeps_points_no_other_beats_on_both_axes():
    assert pareto_front([(1, 10), (2, 8), (1.5, 7), (3, 2), (0.5, 10)]) == [(1, 10), (2, 8), (3, 2)]


def test_a_missing_table_is_an_error_that_writes_nothing(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no results table" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_infermatrix_report_is_a_subcommand_of_infermatrix(tables, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "report", str(tables[0]), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "kv_cache=paged" in proc.stdout and (tmp_path / "o" / "report.html").is_file()


def test_a_plain_sweep_without_an_experiment_gets_speedup_bars_over_its_first_cell(tmp_path):
    plain = [result("", {"kv_cache": kv}, tok_s, 10.0) for kv, tok_s in (("none", 2.0), ("paged", 30.0))]
    table = write_table(tmp_path / "results.jsonl", plain)
    files = build([table], tmp_path / "out")
    assert "figures/speedups.svg" in files and "## Claims" not in files["report.md"].decode()


def test_points_are_labelled_by_what_sets_their_cell_apart():
    from harness.report.figures import distinct_labels

    cells = ["own/m/throughput/uniform/kv_cache=paged,kv_cache_bytes=1", "own/m/throughput/uniform/kv_cache=contiguous,kv_cache_bytes=1"]
    assert distinct_labels(cells) == ["kv_cache=paged", "kv_cache=contiguous"]
    assert distinct_labels(["hf/m/latency/fixed"]) == ["hf,m,latency,fixed"]


def test_cost_and_energy_columns_show_when_results_carry_them(tmp_path):
    priced = result("kv_cache", {"kv_cache": "paged"}, 30.0, 33.0,
                    extra={"cost": {"usd_per_1m_output_tokens": 12.5}, "energy": {"joules_per_token": 0.8}})  # fmt: skip
    files = build([write_table(tmp_path / "results.jsonl", [priced])], tmp_path / "out")
    header = next(line for line in files["report.md"].decode().splitlines() if line.startswith("| cell |"))
    assert "cost.usd_per_1m_output_tokens" in header and "energy.joules_per_token" in header
    assert "| 12.5 | 0.8 |" in files["report.md"].decode()
