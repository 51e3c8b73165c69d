"""Result files are written atomically; tables append whole rows and survive torn lines."""

import json
import os

import pytest

from harness import record

SAME = {"hardware_id": "hw", "code_version": "v1"}


def test_atomic_write_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "result.json"
    record.write_json_atomic(path, {"status": "ok", "value": 1})
    with pytest.raises(TypeError):
        record.write_json_atomic(path, {"status": "ok", "bad": object()})
    assert json.loads(path.read_text()) == {"status": "ok", "value": 1}
    assert os.listdir(tmp_path) == ["result.json"]  # no temporary file left behind


def test_nan_is_written_as_null():
    assert record._clean({"a": float("nan"), "b": [float("inf"), 1.0]}) == {"a": None, "b": [None, 1.0]}


def test_config_hash_ignores_key_order_and_changes_with_values():
    assert record.config_hash({"a": 1, "b": {"c": 2}}) == record.config_hash({"b": {"c": 2}, "a": 1})
    assert record.config_hash({"a": 1}) != record.config_hash({"a": 2})


def test_table_rows_append_and_a_torn_line_is_skipped(tmp_path):
    table = tmp_path / record.TABLE_NAME
    record.append_row(table, {**SAME, "config_hash": "h1", "status": "ok", "result_path": str(table)})
    with open(table, "a") as f:
        f.write('{"config_hash": "h2", "stat')  # a crash mid-write
    assert [r["config_hash"] for r in record.read_rows(table)] == ["h1"]
    assert record.reusable(table, "h1", "hw", "v1")["status"] == "ok"
    assert record.reusable(table, "h2", "hw", "v1") is None


def test_reusable_ignores_failed_rows_and_missing_result_files(tmp_path):
    table = tmp_path / record.TABLE_NAME
    record.append_row(table, {**SAME, "config_hash": "h", "status": "failed", "result_path": str(table)})
    record.append_row(table, {**SAME, "config_hash": "h", "status": "ok", "result_path": str(tmp_path / "gone.json")})
    assert record.reusable(table, "h", "hw", "v1") is None


def test_reusable_needs_the_same_hardware_and_unless_told_otherwise_the_same_code(tmp_path):
    table = tmp_path / record.TABLE_NAME
    record.append_row(table, {**SAME, "config_hash": "h", "status": "ok", "result_path": str(table)})
    assert record.reusable(table, "h", "other-hw", "v1") is None
    assert record.reusable(table, "h", "hw", "v2") is None
    assert record.reusable(table, "h", "hw", None)["code_version"] == "v1"  # reuse=any


def test_replace_row_keeps_one_row_per_job_in_job_order(tmp_path):
    table = tmp_path / record.TABLE_NAME
    for job, value in (("sweep/0", "a"), ("sweep/1", "b"), ("sweep/0", "c")):
        record.replace_row(table, {"job_dir": job, "value": value})
    assert [(r["job_dir"], r["value"]) for r in record.read_rows(table)] == [("sweep/0", "c"), ("sweep/1", "b")]


def test_pandas_reads_the_table_in_one_line(tmp_path):
    import pandas as pd

    table = tmp_path / record.TABLE_NAME
    for i in range(3):
        record.append_row(table, record.flatten({"cell": f"c{i}", "metrics": {"ttft_ms": {"mean": i}}}))
    df = pd.read_json(table, lines=True)
    assert list(df["metrics.ttft_ms.mean"]) == [0, 1, 2]


def test_table_row_carries_accuracy_values_and_the_gate_verdict(tmp_path):
    result = {
        "cell": "own/m/latency/fixed", "status": "ok", "config_hash": "h", "config": {"engine": {"name": "own"}},
        "accuracy": {"tasks": {"mmlu": {"metrics": {"acc,none": {"value": 0.31, "stderr": 0.02}}}},
                     "gate": {"status": "fail", "passed": False}},
    }  # fmt: skip
    row = record.table_row(result, tmp_path / "result.json")
    assert row["accuracy.mmlu.acc,none"] == 0.31 and row["accuracy.mmlu.acc,none.stderr"] == 0.02
    assert row["accuracy.gate"] == "fail" and row["engine"] == "own"
