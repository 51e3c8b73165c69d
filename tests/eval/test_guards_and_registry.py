"""Cheap checks: what evaluate refuses or skips, and the lm-eval model registration."""

from __future__ import annotations

import pytest

from engines.base import ModelSpec
from harness.eval import EvalConfig, MMLUConfig, evaluate
from harness.eval.cli import take_local_data


def test_random_weights_are_refused(tmp_path):
    random_model = ModelSpec(name="tiny", path=None, random_config={"hidden_size": 8})
    with pytest.raises(ValueError, match="random weights"):
        evaluate(EvalConfig(mmlu=MMLUConfig(limit=1)), engine=None, model=random_model, out_dir=tmp_path, baseline=None)


def test_no_selected_task_means_no_accuracy_block(tmp_path):
    model = ModelSpec(name="m", path=str(tmp_path))
    assert evaluate(EvalConfig(), engine=None, model=model, out_dir=tmp_path, baseline=None) == {}


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("gate_ratio", 1.5)])
def test_nonsense_settings_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        EvalConfig(**{field: value})


def test_registration_adds_infermatrix_and_keeps_the_builtin_models():
    from lm_eval.api.registry import get_model

    from harness.eval.register import InfermatrixLM, register

    register()
    register()  # idempotent
    assert get_model("infermatrix") is InfermatrixLM
    assert get_model("dummy").__name__ == "DummyLM"


def test_wrapper_cli_takes_out_its_local_data_flag():
    argv = ["--model", "infermatrix", "--local_data", "/data", "--tasks", "gsm8k"]
    assert take_local_data(argv) == (["--model", "infermatrix", "--tasks", "gsm8k"], "/data")
    assert take_local_data(["--local_data=/d", "--limit", "2"]) == (["--limit", "2"], "/d")


def test_model_arg_resolves_embedded_folders_and_model_config_names(smollm2_dir):
    from harness.eval.register import model_from_arg

    assert model_from_arg("embedded", None).path == str(smollm2_dir)
    assert model_from_arg(str(smollm2_dir), "bfloat16").dtype == "bfloat16"
    by_name = model_from_arg("qwen2.5-0.5b", None)
    assert (by_name.path, by_name.dtype) == ("Qwen/Qwen2.5-0.5B-Instruct", "bfloat16")


def test_wrapper_cli_gives_the_infermatrix_model_the_batch_size_it_will_print_and_use():
    from harness.eval.cli import with_batch_size

    argv = ["--model", "infermatrix", "--tasks", "gsm8k"]
    assert with_batch_size(argv) == [*argv, "--batch_size", "16"]
    assert with_batch_size([*argv, "--batch_size", "4"]) == [*argv, "--batch_size", "4"]  # the user's wins
    assert with_batch_size(["--model", "hf", "--tasks", "gsm8k"]) == ["--model", "hf", "--tasks", "gsm8k"]
