"""The `infermatrix` command end to end: a two-cell sweep on the embedded model, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["tracker=none", "scenario.repeats=2", "scenario.warmup=0", "workload.input_len.mean=8",
        "workload.output_len.mean=4", "threads=1"]  # fmt: skip


def infermatrix(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", *args, f"store={tmp_path / 'store'}",
           f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)


def test_bad_technique_value_exits_nonzero_naming_the_choices(tmp_path):
    proc = infermatrix(tmp_path, "technique.kv_cache=bogus")
    assert proc.returncode != 0
    assert "paged" in proc.stderr and "contiguous" in proc.stderr and "none" in proc.stderr


def test_unknown_engine_exits_nonzero_listing_engines(tmp_path):
    proc = infermatrix(tmp_path, "engine=nope")
    assert proc.returncode != 0 and "hf" in proc.stderr and "own" in proc.stderr


@pytest.mark.parametrize("sweep", [(), ("-m",)])
@pytest.mark.parametrize(
    "override, env_var",
    [("+tracker.api_key=sk-test-SECRET123", "WANDB_API_KEY"), ("+model.hf_token=hf-test-SECRET123", "HF_TOKEN")],
)
def test_a_secret_on_the_command_line_is_refused_before_anything_is_written(tmp_path, sweep, override, env_var):
    # a valid cell that would otherwise run and write .hydra/*.yaml and result.json with the override in them
    proc = infermatrix(tmp_path, *sweep, *TINY, override)
    assert proc.returncode == 2
    assert env_var in proc.stderr and override.split("=")[0].lstrip("+") in proc.stderr
    assert "SECRET123" not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]  # run/sweep dirs, store, cwd's outputs/multirun
    assert [p for p in written if "SECRET123" in p.read_text(errors="replace")] == []
    assert written == []


def test_a_misspelt_key_added_with_plus_exits_2_with_a_suggestion(tmp_path):
    proc = infermatrix(tmp_path, *TINY, "+scenario.repeat=3")
    assert proc.returncode == 2
    assert "did you mean 'repeats'?" in proc.stderr and "arrival, batch_size, burstiness, cooldown_requests, max_concurrency, min_duration_s, name, num_requests, repeats, request_rate, slo, warmup, warmup_requests" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_kv_cache_sweep_gives_two_recorded_cells_and_a_summary(tmp_path, smollm2_dir):
    proc = infermatrix(tmp_path, "-m", "engine=hf", "technique.kv_cache=none,contiguous", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads((tmp_path / "sweep" / str(i) / "result.json").read_text()) for i in (0, 1)]
    assert [r["technique_applied"]["kv_cache"] for r in results] == ["none", "contiguous"]
    assert all(r["status"] == "ok" for r in results)
    rows = (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 2
    assert "Sweep summary" in proc.stdout and "kv_cache=contiguous" in proc.stdout
    # the printed speedup is the ratio of the two measured throughputs
    ratio = results[1]["metrics"]["output_throughput_tok_s"] / results[0]["metrics"]["output_throughput_tok_s"]
    assert f"{ratio:.2f}x" in proc.stdout


def test_failed_single_run_exits_nonzero_and_records_the_reason(tmp_path):
    proc = infermatrix(tmp_path, "model.source=local", "model.local_path=/nonexistent/model", *TINY)
    assert proc.returncode == 1
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and "/nonexistent/model" in result["reason"]
