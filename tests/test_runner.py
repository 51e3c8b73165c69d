"""One config -> one recorded cell: ok, skipped, failed, and resumed sweeps."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import engines
from harness.config import register
from harness.runner import run_cell

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = ["tracker=none", "isolation=none", "scenario.repeats=2", "scenario.warmup=0", "workload.input_len.mean=8",
         "workload.output_len.mean=3"]  # fmt: skip
register()


@pytest.fixture
def fake_engine(monkeypatch):
    import fake_engine

    monkeypatch.setitem(engines.ENGINES, "fake", ("engines.hf.config:HfOptions", "fake_engine:FakeEngine"))
    fake_engine.CALLS.clear()
    monkeypatch.setattr(fake_engine.FakeEngine, "fail_with", None)
    return fake_engine


def cell(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, Path]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, f"store={tmp_path / 'store'}", *overrides])
    out = tmp_path / name
    return run_cell(cfg, out, tmp_path / "sweep", "sweep-1", 0), out


def test_ok_cell_writes_result_json_and_both_tables(tmp_path, fake_engine):
    row, out = cell(tmp_path, "a", "engine.name=fake")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == row["status"] == "ok"
    assert result["metrics"]["total_output_tokens"] == 2 * 3  # 2 repeats x 1 request x 3 tokens
    assert result["technique_applied"]["kv_cache"] == "none"
    assert len(result["requests"]) == 2 and result["ci95"]["output_throughput_tok_s"] is not None
    for table in (tmp_path / "store" / "results.jsonl", tmp_path / "sweep" / "results.jsonl"):
        assert [r["config_hash"] for r in map(json.loads, table.read_text().splitlines())] == [row["config_hash"]]


def test_cell_with_an_ok_result_is_reused_on_rerun_unless_reuse_never(tmp_path, fake_engine):
    first, _ = cell(tmp_path, "a", "engine.name=fake")
    calls = len(fake_engine.CALLS)
    again, out = cell(tmp_path, "b", "engine.name=fake")
    assert again["result_path"] == first["result_path"] and not (out / "result.json").exists()
    assert len(fake_engine.CALLS) == calls  # nothing was measured again
    forced, out = cell(tmp_path, "c", "engine.name=fake", "reuse=never")
    assert (out / "result.json").exists() and len(fake_engine.CALLS) > calls
    assert forced["config_hash"] == first["config_hash"]  # reuse and tracker don't change the hash


def test_failing_engine_is_recorded_as_failed_with_its_reason(tmp_path, fake_engine, monkeypatch):
    monkeypatch.setattr(fake_engine.FakeEngine, "fail_with", "out of blocks")
    row, out = cell(tmp_path, "a", "engine.name=fake")
    result = json.loads((out / "result.json").read_text())
    assert row["status"] == result["status"] == "failed"
    assert "RuntimeError: out of blocks" in result["reason"] and "Traceback" in result["traceback"]
    # a failed cell is not "done": the next run measures it again
    monkeypatch.setattr(fake_engine.FakeEngine, "fail_with", None)
    assert cell(tmp_path, "b", "engine.name=fake")[0]["status"] == "ok"


def test_unsupported_technique_is_skipped_with_the_reason(tmp_path, fake_engine):
    row, out = cell(tmp_path, "a", "engine.name=fake", "technique.kv_cache=paged")
    assert row["status"] == "skipped"
    assert "kv_cache=paged (supports: none)" in row["reason"]
    assert fake_engine.CALLS == []


def test_a_wrong_eval_data_dir_fails_the_cell_before_anything_is_measured(tmp_path, fake_engine):
    row, out = cell(tmp_path, "a", "engine.name=fake", "eval=mmlu", f"eval.data_dir={tmp_path / 'no-such-data'}")
    result = json.loads((out / "result.json").read_text())
    assert row["status"] == "failed" and "FileNotFoundError: no mmlu data under" in row["reason"]
    assert fake_engine.CALLS == [] and "metrics" not in result  # no generate call: the measurement never started


def test_invalid_value_fails_the_cell_with_a_config_message(tmp_path, fake_engine):
    row, _ = cell(tmp_path, "a", "engine.name=fake", "scenario.repeats=0")
    assert row["status"] == "failed" and "scenario.repeats must be >= 1" in row["reason"]


def test_hf_cell_on_smollm2_is_logged_to_wandb_offline_with_the_same_values(tmp_path, smollm2_dir, monkeypatch):
    from harness.trackers.wandb_log import read_run

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    row, out = cell(tmp_path, "a", "tracker=wandb", "tracker.mode=offline")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok", result.get("reason")
    assert result["model"]["source_kind"] == "embedded-gguf" and not result["model"]["random_weights"]
    assert row["tracker.mode"] == "offline"
    run = read_run(row["tracker.run_dir"])
    summary = run["summary"]
    for key in ("ttft_ms.mean", "tpot_ms.p99", "e2el_ms.p50"):
        name, stat = key.split(".")
        assert summary[key] == pytest.approx(result["metrics"][name][stat])
    assert summary["output_throughput_tok_s"] == pytest.approx(result["metrics"]["output_throughput_tok_s"])
    assert run["config"]["engine"]["name"] == "hf" and run["config"]["technique"]["kv_cache"] is None


def test_invalid_tracker_config_fails_the_cell_without_stopping_the_sweep(tmp_path, fake_engine):
    row, out = cell(tmp_path, "a", "engine.name=fake", "tracker.mode=sometimes")
    assert row["status"] == "failed" and "sometimes" in row["reason"]
    assert row["tracker.tracker"] == "invalid" and (out / "result.json").is_file()


def test_a_cell_name_says_what_differs_from_the_defaults():
    from harness.runner import cell_name

    config = {"technique": {"kv_cache": "paged", "graphs": None}, "engine": {"name": "own", "block_size": 32},
              "model": {"name": "m", "dtype": "bfloat16"}, "scenario": {"name": "latency"}, "workload": {"name": "w"}}
    assert cell_name(config) == "own/m:bfloat16/latency/w/kv_cache=paged,block_size=32"
