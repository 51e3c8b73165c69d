"""conf/eval options compose with Hydra 1.3: one task, the other, or both at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from harness.eval.config import EvalConfig, GSM8KConfig, MMLUConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class EvalTestApp:
    # _self_ first: the schema, then the chosen options on top (as the root config does)
    defaults: list = field(default_factory=lambda: ["_self_", {"eval": "none"}])
    eval: EvalConfig = field(default_factory=EvalConfig)


@pytest.fixture()
def compose_eval():
    ConfigStore.instance().store(name="eval_test_app", node=EvalTestApp)

    def run(*overrides: str) -> EvalConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="eval_test_app", overrides=list(overrides))
        return OmegaConf.to_object(cfg.eval)

    yield run
    GlobalHydra.instance().clear()


def test_default_selects_no_task(compose_eval):
    assert compose_eval().selected() == {}


def test_mmlu_option_selects_standard_five_shot_mmlu(compose_eval):
    cfg = compose_eval("eval=mmlu")
    assert cfg.selected() == {"mmlu": MMLUConfig(num_fewshot=5, limit=None, subjects=[])}


def test_gsm8k_option_selects_standard_five_shot_gsm8k(compose_eval):
    cfg = compose_eval("eval=gsm8k")
    assert cfg.selected() == {"gsm8k": GSM8KConfig(num_fewshot=5, limit=None, max_gen_toks=256)}


def test_both_options_merge_under_their_own_keys(compose_eval):
    cfg = compose_eval("eval=[mmlu,gsm8k]", "eval.mmlu.limit=10", "eval.gsm8k.limit=50", "eval.data_dir=/data")
    assert list(cfg.selected()) == ["mmlu", "gsm8k"]
    assert (cfg.mmlu.limit, cfg.gsm8k.limit, cfg.data_dir) == (10, 50, "/data")


def test_subject_list_override_is_typed(compose_eval):
    cfg = compose_eval("eval=mmlu", "eval.mmlu.subjects=[anatomy,virology]")
    assert cfg.mmlu.subjects == ["anatomy", "virology"]
    with pytest.raises(ConfigCompositionException, match="limit"):
        compose_eval("eval=mmlu", "eval.mmlu.limit=ten")
