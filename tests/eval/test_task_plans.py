"""Which lm-eval tasks an EvalConfig runs, and the local MMLU conversion to the hub schema."""

from __future__ import annotations

import pytest
import yaml

from harness.eval.config import EvalConfig, GSM8KConfig, MMLUConfig
from harness.eval.local_data import mmlu_rows
from harness.eval.tasks import MMLU_GROUP, builtin_tasks_dir, mmlu_subjects, plan_tasks


def test_there_are_57_mmlu_subjects():
    assert len(mmlu_subjects()) == 57


def test_hub_plans_run_lm_evals_builtin_tasks(tmp_path):
    cfg = EvalConfig(mmlu=MMLUConfig(subjects=["virology", "anatomy"], limit=3), gsm8k=GSM8KConfig(limit=5))
    plans, folder = plan_tasks(cfg, tmp_path)
    assert [(p.name, p.lm_eval_name, p.data_source, p.limit) for p in plans] == [
        ("mmlu", MMLU_GROUP, "hub", 3),
        ("gsm8k", "gsm8k", "hub", 5),
    ]
    group = yaml.safe_load((folder / f"{MMLU_GROUP}.yaml").read_text())
    assert group["task"] == ["mmlu_virology", "mmlu_anatomy"]
    for member in group["task"]:
        builtin = yaml.safe_load((builtin_tasks_dir() / "mmlu" / "default" / f"{member}.yaml").read_text())
        assert builtin["task"] == member
    assert group["aggregate_metric_list"] == [{"metric": "acc", "weight_by_size": True}]


def test_local_plans_accept_the_data_root_or_each_release_folder(tmp_path, shared_data):
    from_root = EvalConfig(mmlu=MMLUConfig(subjects=["anatomy"]), gsm8k=GSM8KConfig(), data_dir=str(shared_data))
    per_task = EvalConfig(
        mmlu=MMLUConfig(subjects=["anatomy"], data_dir=str(shared_data / "mmlu")),
        gsm8k=GSM8KConfig(data_dir=str(shared_data / "gsm8k")),
    )
    first, folder = plan_tasks(from_root, tmp_path)
    second, _ = plan_tasks(per_task, tmp_path)
    assert [p.data_source for p in first] == [p.data_source for p in second]
    assert [p.data_source for p in first] == [str(shared_data / "mmlu"), str(shared_data / "gsm8k")]
    local = yaml.safe_load((folder / "infermatrix_mmlu_local_anatomy.yaml").read_text())
    assert local["include"] == str(builtin_tasks_dir() / "mmlu" / "default" / "mmlu_anatomy.yaml")
    assert set(local) == {"include", "task", "task_alias", "tag", "dataset_path", "dataset_name", "dataset_kwargs"}


def test_unknown_subjects_and_missing_files_are_named(tmp_path, shared_data):
    with pytest.raises(ValueError, match="astrology"):
        plan_tasks(EvalConfig(mmlu=MMLUConfig(subjects=["astrology"])), tmp_path)
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        plan_tasks(EvalConfig(gsm8k=GSM8KConfig(), data_dir=str(tmp_path)), tmp_path)


def test_mmlu_csv_rows_become_hub_schema_with_quoted_commas_and_newlines(shared_data, tmp_path):
    rows = mmlu_rows(shared_data / "mmlu" / "test" / "anatomy_test.csv", "anatomy")
    assert len(rows) == 135
    assert all(set(r) == {"question", "subject", "choices", "answer"} and len(r["choices"]) == 4 for r in rows)
    assert {r["answer"] for r in rows} == {0, 1, 2, 3}
    tricky = shared_data / "mmlu" / "dev" / "abstract_algebra_dev.csv"
    second = mmlu_rows(tricky, "abstract_algebra")[1]
    assert second["choices"] == ["True, True", "False, False", "True, False", "False, True"]
    assert second["answer"] == 1
    bad = tmp_path / "bad_test.csv"
    bad.write_text("only,three,fields\n")
    with pytest.raises(ValueError, match="6 fields"):
        mmlu_rows(bad, "bad")
