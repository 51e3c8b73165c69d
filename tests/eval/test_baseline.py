"""Which results-table row is a cell's baseline, and how the 99% gate judges against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.eval.baseline import compare, eval_settings, find_baseline
from harness.eval.config import EvalConfig, MMLUConfig

CFG = EvalConfig(mmlu=MMLUConfig(limit=5))


def write_result(folder: Path, name: str, acc: float, cfg: EvalConfig = CFG) -> str:
    path = folder / name / "result.json"
    path.parent.mkdir(parents=True)
    block = {"settings": eval_settings(cfg), "tasks": {"mmlu": {"metrics": {"acc,none": {"value": acc, "stderr": 0.01}}}}}
    path.write_text(json.dumps({"accuracy": block}))
    return str(path)


def row(result_path: str, engine: str = "hf", model: str = "smollm2", status: str = "ok", **extra) -> dict:
    return {"model": model, "engine": engine, "status": status, "result_path": result_path, **extra}


def test_baseline_is_the_newest_ok_hf_row_of_the_same_model_and_eval_settings(tmp_path):
    rows = [
        row(write_result(tmp_path, "old", 0.30)),
        row(write_result(tmp_path, "new", 0.31)),
        row(write_result(tmp_path, "failed", 0.99), status="error"),
        row(write_result(tmp_path, "other-model", 0.99), model="qwen"),
        row(write_result(tmp_path, "other-settings", 0.99, EvalConfig(mmlu=MMLUConfig(limit=6)))),
        row(write_result(tmp_path, "own", 0.99), engine="own"),
    ]
    this = row(str(tmp_path / "me" / "result.json"), engine="own", **{"technique.kv_cache": "paged"})
    found = find_baseline(rows, CFG, this)
    assert found["result_path"] == rows[1]["result_path"]
    assert found["accuracy"]["tasks"]["mmlu"]["metrics"]["acc,none"]["value"] == 0.31


def test_a_cell_that_is_itself_a_baseline_gets_none(tmp_path):
    rows = [row(write_result(tmp_path, "hf", 0.3))]
    assert find_baseline(rows, CFG, row(str(tmp_path / "me.json"), engine="hf")) is None


def test_declared_overrides_select_the_baseline_technique(tmp_path):
    cfg = EvalConfig(mmlu=MMLUConfig(limit=5))
    cfg.baseline.where = {"engine": "own", "technique.kv_cache": "none"}
    rows = [
        row(write_result(tmp_path, "hf", 0.3)),
        row(write_result(tmp_path, "own-none", 0.3), engine="own", **{"technique.kv_cache": "none"}),
        row(write_result(tmp_path, "own-paged", 0.3), engine="own", **{"technique.kv_cache": "paged"}),
    ]
    this = row(str(tmp_path / "me.json"), engine="own", **{"technique.kv_cache": "paged"})
    assert find_baseline(rows, cfg, this)["result_path"] == rows[1]["result_path"]


def test_no_matching_row_means_no_baseline(tmp_path):
    rows = [row(write_result(tmp_path, "hf", 0.3), model="qwen")]
    assert find_baseline(rows, CFG, row("me.json", engine="own")) is None


@pytest.mark.parametrize(("mine", "passed"), [(0.297, True), (0.30, True), (0.296, False), (0.1, False)])
def test_gate_passes_at_ninety_nine_percent_of_the_baseline(mine, passed):
    theirs = {"accuracy": {"tasks": {"mmlu": {"metrics": {"acc,none": {"value": 0.30}}}}}}
    tasks = {"mmlu": {"metrics": {"acc,none": {"value": mine, "stderr": 0.01}}}}
    delta, gate = compare(tasks, theirs, 0.99)
    assert gate["passed"] is passed
    assert gate["status"] == ("pass" if passed else "fail")
    assert delta["mmlu/acc,none"] == pytest.approx(mine - 0.30)


def test_gate_fails_when_the_baseline_lacks_a_metric_and_reports_no_baseline_without_one():
    tasks = {"gsm8k": {"metrics": {"exact_match,strict-match": {"value": 0.1, "stderr": 0.01}}}}
    theirs = {"accuracy": {"tasks": {"mmlu": {"metrics": {"acc,none": {"value": 0.30}}}}}}
    assert compare(tasks, theirs, 0.99)[1]["passed"] is False
    assert compare(tasks, None, 0.99)[1] == {"status": "no_baseline", "passed": None, "ratio": 0.99}
