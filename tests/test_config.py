"""Config composition and validation: bad values fail loudly and name the valid choices."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from harness.config import Config, ConfigError, ModelConfig, ModelSource, check_overrides, load, register

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_config_is_the_hf_latency_cell_on_the_embedded_model():
    config = load(compose_config())
    assert isinstance(config, Config)
    assert (config.engine.name, config.model.name, config.scenario.name.value) == ("hf", "smollm2-135m", "latency")
    assert config.model.source is ModelSource.auto and config.model.has_embedded
    assert config.technique.kv_cache is None  # the engine's default, resolved and recorded at run time


@pytest.mark.parametrize("model", ["llama-3.1-8b", "llama-2-7b", "qwen2.5-0.5b", "qwen2.5-7b", "mistral-7b"])
def test_shipped_model_configs_load_with_random_weights(model):
    config = load(compose_config(f"model={model}", "model.source=random"))
    assert config.model.architecture["vocab_size"] > 30000


def test_bad_enum_value_names_the_valid_choices():
    with pytest.raises((ValidationError, ConfigCompositionException)) as err:
        compose_config("technique.kv_cache=bogus")
    message = str(err.value) + str(err.value.__cause__)
    for choice in ("paged", "contiguous", "none"):
        assert choice in message


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as err:
        compose_config("engine=nonexistent")
    assert "hf" in str(err.value) and "own" in str(err.value)


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_config("scenario.bogus_key=1")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("scenario.repeats=0", "scenario.repeats must be >= 1"),
        ("engine.name=nope", "choose one of"),
        ("workload.input_len.low=0", "workload.input_len"),
        ("model.source=embedded", None),  # smollm2 has an embedded copy: valid
        ("threads=0", "threads must be >= 1"),
    ],
)
def test_range_and_cross_field_checks_raise_config_error(override, fragment):
    cfg = compose_config(override)
    if fragment is None:
        load(cfg)
        return
    with pytest.raises(ConfigError, match=fragment):
        load(cfg)


def test_random_source_without_architecture_is_refused():
    with pytest.raises(ConfigError, match="needs model.architecture"):
        ModelConfig(name="custom", source=ModelSource.random)


@pytest.mark.parametrize(
    "override, message",
    [
        ("+scenario.repeat=3", "unknown config key 'scenario.repeat' (did you mean 'repeats'?)"),
        ("+workload.input_len.maen=8", "unknown config key 'workload.input_len.maen' (did you mean 'mean'?)"),
        ("++engine.batch_sise=8", "did you mean 'batch_size'?"),
        ("+threadz=2", "did you mean 'threads'?"),
        ("+eval.mmlu.limt=2", "did you mean 'limit'?"),
    ],
)
def test_a_key_added_with_plus_that_the_schema_lacks_is_an_error(override, message):
    cfg = compose_config("eval=mmlu", override)  # Hydra's `+` adds any key to a typed node
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert message in str(err.value)


def test_unknown_key_error_lists_the_valid_keys():
    with pytest.raises(ConfigError, match="valid keys of scenario: arrival, batch_size, burstiness, cooldown_requests, max_concurrency, min_duration_s, name, num_requests, repeats, request_rate, slo, warmup, warmup_requests"):
        load(compose_config("+scenario.repeat=3"))


def test_free_form_dict_fields_take_any_key():
    config = load(compose_config("+model.architecture.rope_scaling.factor=8.0", "+eval.baseline.where.device=cpu"))
    assert config.model.architecture["rope_scaling"] == {"factor": 8.0}
    assert config.eval.baseline.where == {"engine": "hf", "device": "cpu"}


def test_command_line_overrides_are_checked_before_hydra_starts():
    check_overrides(["-m", "engine=own", "scenario.repeats=2", "+model.architecture.x=1", "hydra/launcher=slurm",
                     "hydra.sweep.dir=/tmp/x", "eval=mmlu", "eval.mmlu.limit=3"])  # fmt: skip
    with pytest.raises(ConfigError, match="did you mean 'repeats'"):
        check_overrides(["+scenario.repeat=3"])


def test_max_model_len_is_an_engine_option_that_defaults_to_the_models_context():
    config = load(compose_config("engine=own", "engine.max_model_len=4096"))
    assert config.engine.max_model_len == 4096
    assert load(compose_config("engine=hf")).engine.max_model_len is None
    with pytest.raises(ConfigError, match="engine.max_model_len must be >= 1 or null"):
        load(compose_config("engine.max_model_len=0"))


def test_each_engine_takes_only_the_options_it_honours():
    own = load(compose_config("engine=own", "engine.block_size=32")).engine
    assert (type(own).__name__, own.block_size) == ("OwnOptions", 32)
    hf = load(compose_config("engine=hf")).engine
    assert type(hf).__name__ == "HfOptions" and not hasattr(hf, "block_size")  # hf has no KV blocks
    with pytest.raises(ConfigError, match="unknown config key 'engine.block_size'"):
        check_overrides(["engine=hf", "engine.block_size=32"])
    with pytest.raises(ConfigError, match="engine.max_num_seqs must be >= 1"):
        load(compose_config("engine=own", "engine.max_num_seqs=0"))
