"""Credentials never reach disk: refused on the command line, redacted from configs that carry them anyway."""

import pytest

from harness.trackers.secrets import REDACTED, credential_env_var, is_secret_key, refuse_secret_overrides, scrub_config


@pytest.mark.parametrize(
    "arg, env_var",
    [
        ("+tracker.api_key=sk-1", "WANDB_API_KEY"),
        ("++tracker.apiKey=sk-1", "WANDB_API_KEY"),
        ("tracker.api_key=sk-1,sk-2", "WANDB_API_KEY"),  # a -m sweep over secrets
        ("+model.hf_token=hf_1", "HF_TOKEN"),
        ("+engine.openai_api_key=sk-1", "OPENAI_API_KEY"),
        ("hydra.job.env_set.HF_TOKEN=hf_1", "HF_TOKEN"),  # would land in .hydra/hydra.yaml
    ],
)
def test_secret_overrides_are_refused_naming_the_environment_variable(arg, env_var):
    with pytest.raises(ValueError, match=env_var) as err:
        refuse_secret_overrides(["-m", "engine=hf", arg])
    assert arg.split("=", 1)[1] not in str(err.value)  # the message names the key, never the value


def test_ordinary_overrides_pass():
    refuse_secret_overrides(["-m", "engine.max_num_batched_tokens=64", "model.architecture.vocab_size=10",
                             "hydra/launcher=slurm", "workload.input_len.mean=8"])  # fmt: skip


def test_unrecognised_credentials_point_to_every_known_variable():
    message = credential_env_var("db_password")
    assert all(name in message for name in ("WANDB_API_KEY", "HF_TOKEN", "OPENAI_API_KEY"))


def test_scrub_config_redacts_secret_keys_and_their_values_elsewhere():
    resolved = {"model": {"architecture": {"hf_token": "hf-SECRET123"}, "hub_id": "org/m"},
                "tracker": {"tags": ["from hf-SECRET123"]}}  # fmt: skip
    scrubbed = scrub_config(resolved)
    assert scrubbed["model"] == {"architecture": {"hf_token": REDACTED}, "hub_id": "org/m"}
    assert scrubbed["tracker"]["tags"] == [f"from {REDACTED}"]
    assert resolved["model"]["architecture"]["hf_token"] == "hf-SECRET123"  # a copy: the hash input is unchanged


def test_vocabulary_tokens_are_not_credentials():
    plain = ["eos_token_id", "model.architecture.bos_token_id", "stop_token_ids", "token_type_ids", "pad_token_id",
             "kv_bytes_per_token", "last_token", "eos_token", "token_times", "real_token_steps"]
    secret = ["hf_token", "access_token", "HF_TOKEN", "token", "model.hub-token", "githubToken"]
    assert [k for k in plain + secret if is_secret_key(k)] == secret
    refuse_secret_overrides(["+model.architecture.eos_token_id=[2,3]"])
    architecture = {"model": {"architecture": {"eos_token_id": 2}}}
    assert scrub_config(architecture) == architecture
