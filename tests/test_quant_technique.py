"""technique.quant and quant_group_size: validated when the config loads, resolved by each engine (defaults
filled, unsupported values refused with the reason the harness records as a skipped cell)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from engines import engine_class
from engines.base import Quant, Technique, UnsupportedTechnique
from harness.config import ConfigError, load, register

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_quant_values_load_and_default_to_the_engine_choice():
    assert load(compose_config()).technique.quant is None
    config = load(compose_config("engine=own", "technique.quant=int4", "technique.quant_group_size=32"))
    assert (config.technique.quant, config.technique.quant_group_size) == (Quant.int4, 32)


def test_an_unknown_quant_names_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("technique.quant=int3")
    assert "none,int8,int4,gptq,awq,nf4,torchao_int8,gguf" in str(err.value.__cause__).replace(" ", "")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (("technique.quant=int4", "technique.quant_group_size=48"), "power of two"),
        (("technique.quant=int4", "technique.quant_group_size=0"), "power of two"),
        (("technique.quant=int8", "technique.quant_group_size=64"), "needs a grouped quant"),
        (("technique.quant_group_size=64",), "not quant=None"),
    ],
)
def test_bad_group_sizes_are_config_errors(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load(compose_config("engine=own", *overrides))


@pytest.mark.parametrize(
    "engine, quant, group, expected",
    [
        ("own", None, None, (Quant.none, None)),
        ("own", Quant.int4, None, (Quant.int4, 64)),  # 64 divides SmolLM2's 576 and every Llama width
        ("own", Quant.int4, 128, (Quant.int4, 128)),
        ("own", Quant.int8, None, (Quant.int8, None)),
        ("hf", Quant.gptq, None, (Quant.gptq, 64)),
        ("hf", Quant.nf4, None, (Quant.nf4, None)),
        ("llamacpp", None, None, (Quant.gguf, None)),
        ("vllm", None, None, (Quant.none, None)),
    ],
)
def test_engines_resolve_what_they_honour(engine, quant, group, expected):
    resolved = engine_class(engine).resolve_technique(Technique(quant=quant, quant_group_size=group))
    assert (resolved.quant, resolved.quant_group_size) == expected


@pytest.mark.parametrize(
    "engine, quant, group, fragment",
    [
        ("own", Quant.gptq, None, "quant=gptq (supports: none, int8, int4)"),
        ("own", Quant.int4, 16, "quant_group_size=16 (supports: 32, 64, 128, 256)"),
        ("hf", Quant.int4, None, "quant=int4"),
        ("llamacpp", Quant.none, None, "quant=none (supports: gguf)"),
        ("vllm", Quant.int8, None, "quant=int8 (supports: none)"),
        ("fault", Quant.gguf, None, "quant=gguf"),
    ],
)
def test_values_an_engine_does_not_honour_are_refused_with_the_reason(engine, quant, group, fragment):
    with pytest.raises(UnsupportedTechnique, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        engine_class(engine).resolve_technique(Technique(quant=quant, quant_group_size=group))
