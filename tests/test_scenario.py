"""A cell measures what it says: no truncated request passes as ok, and min_duration_s adds repeats."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import engines
from harness.config import register
from harness.runner import run_cell

CONF = Path(__file__).resolve().parents[1] / "conf"
register()
# A llama with a 64-token context and random weights: 60 input tokens leave room for 4 of 10 asked.
TINY_CONTEXT_64 = ("{model_type:llama,vocab_size:256,hidden_size:64,intermediate_size:128,num_hidden_layers:2,"
                   "num_attention_heads:4,num_key_value_heads:2,max_position_embeddings:64,"
                   "eos_token_id:2,bos_token_id:1}")
SIXTY_IN_TEN_OUT = ["workload.input_len.mean=60", "workload.output_len.mean=10"]


@pytest.fixture
def fake_engine(monkeypatch):
    import fake_engine

    monkeypatch.setitem(engines.ENGINES, "fake", ("engines.hf.config:HfOptions", "fake_engine:FakeEngine"))
    for attr, value in (("fail_with", None), ("context", None), ("token_s", 0.0)):
        monkeypatch.setattr(fake_engine.FakeEngine, attr, value)
    return fake_engine.FakeEngine


def cell(tmp_path: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["tracker=none", "isolation=none", f"store={tmp_path / 'store'}", *overrides])
    run_cell(cfg, tmp_path / "cell", tmp_path / "sweep", "sweep-1", 0)
    return json.loads((tmp_path / "cell" / "result.json").read_text())


def test_a_request_cut_short_by_the_context_fails_the_cell_naming_it(tmp_path, fake_engine, monkeypatch):
    monkeypatch.setattr(fake_engine, "context", 64)
    result = cell(tmp_path, "engine.name=fake", "scenario.warmup=0", "scenario.repeats=2", *SIXTY_IN_TEN_OUT)

    assert result["status"] == "failed"
    assert result["reason"].startswith("IncompleteRun: measure 1/2: request r0-0 got 4 of 10 tokens "
                                       "(finish_reason=length, ignore_eos=True)")
    assert "Prompt 60 + 10 output = 70 tokens" in result["reason"] and "max_model_len" in result["reason"]


def test_a_warm_up_is_checked_too(tmp_path, fake_engine, monkeypatch):
    monkeypatch.setattr(fake_engine, "context", 64)
    result = cell(tmp_path, "engine.name=fake", "scenario.warmup=1", *SIXTY_IN_TEN_OUT)

    assert result["status"] == "failed" and "warm-up 1/1: request r1000000-0 got 4 of 10" in result["reason"]


def test_an_ok_cell_records_generated_lengths_beside_planned_ones(tmp_path, fake_engine):
    result = cell(tmp_path, "engine.name=fake", "scenario.warmup=0", "scenario.repeats=2", *SIXTY_IN_TEN_OUT)

    assert result["status"] == "ok", result["reason"]
    for repeat in result["workload"]["repeats"]:
        assert repeat["output_len"] == repeat["generated_len"] == {"mean": 10.0, "min": 10, "max": 10}


def test_min_duration_adds_repeats_until_the_measured_time_reaches_it(tmp_path, fake_engine, monkeypatch):
    monkeypatch.setattr(fake_engine, "token_s", 0.05)  # 3 tokens: 0.15 s a repeat
    result = cell(tmp_path, "engine.name=fake", "scenario.warmup=0", "scenario.repeats=2",
                  "scenario.min_duration_s=1.0", "workload.input_len.mean=8", "workload.output_len.mean=3")

    assert result["status"] == "ok", result["reason"]
    assert len(result["repeats"]) == len(result["workload"]["repeats"]) == 7  # 6 x 0.15 s < 1.0 <= 7 x 0.15 s
    assert result["metrics"]["duration_s"] == pytest.approx(7 * 0.15)
    assert result["ci95"]["output_throughput_tok_s"]["n"] == 7
    assert len({r["hash"] for r in result["workload"]["repeats"]}) == 7  # each extra repeat has fresh prompts


def test_repeats_alone_decide_when_min_duration_is_already_reached(tmp_path, fake_engine, monkeypatch):
    monkeypatch.setattr(fake_engine, "token_s", 0.05)
    result = cell(tmp_path, "engine.name=fake", "scenario.warmup=0", "scenario.repeats=3",
                  "scenario.min_duration_s=0.1", "workload.input_len.mean=8", "workload.output_len.mean=3")

    assert len(result["repeats"]) == 3 and result["ci95"]["ttft_ms.mean"]["warning"] is None


@pytest.mark.parametrize("engine", ["hf", "own"])
def test_a_real_engine_with_a_64_token_context_is_never_ok_with_4_of_10_tokens(tmp_path, engine):
    result = cell(tmp_path, f"engine={engine}", "model.source=random", f"model.architecture={TINY_CONTEXT_64}",
                  "device=cpu", "scenario.warmup=0", "scenario.repeats=1", *SIXTY_IN_TEN_OUT)

    assert result["status"] == "failed", result.get("metrics")
    assert "got 4 of 10 tokens" in result["reason"], result["reason"]
