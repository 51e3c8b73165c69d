"""technique.spec through the harness: an own cell records its speculation statistics and the summary shows
them; other engines skip it with the reason; a draft model name that is no model config fails the cell."""

import json

import pandas as pd
import pytest
from test_runner import cell

from harness.report import summarize

RANDOM_SMOLLM2 = ["engine=own", "model.source=random", "engine.kv_cache_bytes=16777216"]


def test_an_own_cell_records_speculation_and_the_summary_shows_acceptance(tmp_path):
    row, out = cell(tmp_path, "a", *RANDOM_SMOLLM2, "technique.spec=draft", "technique.spec_k=2",
                    "technique.spec_draft_layers=1")  # fmt: skip
    result = json.loads((out / "result.json").read_text())
    assert row["status"] == "ok", row.get("reason")
    assert result["technique_applied"]["spec"] == "draft" and result["technique_applied"]["spec_k"] == 2
    spec = result["engine_stats"]["speculation"]
    assert spec["method"] == "draft" and spec["drafts"] > 0
    assert row["spec.acceptance_rate"] == spec["acceptance_rate"]
    none, _ = cell(tmp_path, "b", *RANDOM_SMOLLM2, "technique.spec=none")
    assert "spec.acceptance_rate" not in none
    text = summarize(pd.DataFrame([none, row]))
    assert "accept" in text.splitlines()[0] and "acc.len" in text.splitlines()[0]


def test_other_engines_skip_speculation_with_the_reason(tmp_path):
    row, _ = cell(tmp_path, "a", "engine=hf", "technique.spec=ngram")
    assert row["status"] == "skipped" and "spec=ngram (supports: none)" in row["reason"]


@pytest.mark.parametrize("override, message", [
    ("technique.spec_draft_model=no-such-model", "is not a model config; choose one of"),
    ("technique.spec_k=0", "technique.spec_k must be an int >= 1"),
])  # fmt: skip
def test_bad_speculation_options_fail_the_cell_with_a_message(tmp_path, override, message):
    row, _ = cell(tmp_path, "a", *RANDOM_SMOLLM2, "technique.spec=draft", override)
    assert row["status"] == "failed" and message in row["reason"]


def test_a_draft_model_name_resolves_to_its_config_with_random_weights_beside_a_random_target():
    from harness.runner import draft_model_spec

    real, random = draft_model_spec("qwen2.5-0.5b"), draft_model_spec("qwen2.5-0.5b", random=True)
    assert real.name == random.name == "qwen2.5-0.5b" and not real.is_random
    assert random.is_random and random.random_config["vocab_size"] == 151936
