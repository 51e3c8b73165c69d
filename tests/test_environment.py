"""collect_environment records what a result ran on; configure_threads sets and reports threads."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.environment import collect_environment, configure_threads, git_state

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_environment_names_the_machine_threads_versions_and_commit():
    env = collect_environment("cpu")
    assert env["device"] == "cpu"
    assert env["cpu_model"] and env["cpu_model"] != "unknown"
    assert env["logical_cores"] == os.cpu_count() and 1 <= env["usable_cores"] <= env["logical_cores"]
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["torch_interop_threads"] == torch.get_num_interop_threads()
    assert env["env"]["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY")
    assert env["gpu_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert env["python"] == platform.python_version()
    assert torch.__version__.startswith(env["packages"]["torch"])
    assert env["packages"]["transformers"]
    assert len(env["git_sha"]) == 40 and isinstance(env["git_dirty"], bool)
    stamp = datetime.datetime.fromisoformat(env["timestamp_utc"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 60
    json.dumps(env)  # a record must be able to store it as is


def test_secrets_in_the_environment_never_reach_the_output(monkeypatch):
    secrets = {"WANDB_API_KEY": "wandb-secret-4f1c9e", "HF_TOKEN": "hf_secret_77ab0d"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    text = json.dumps([collect_environment("cpu"), configure_threads(None)])
    for name, value in secrets.items():
        assert value not in text and name not in text


def test_git_state_outside_a_checkout_is_unknown_not_an_error(tmp_path):
    assert git_state(tmp_path) == {"git_sha": None, "git_dirty": None}


def test_configure_threads_sets_torch_threads_and_leaves_the_wait_policy_to_the_runtime(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    previous = torch.get_num_threads()
    try:
        applied = configure_threads(2)
        assert torch.get_num_threads() == 2
        assert applied["requested_threads"] == 2 and applied["torch_threads"] == 2
        assert "OMP_WAIT_POLICY" not in os.environ and applied["omp_wait_policy"] == "unset"
        assert applied["omp_wait_policy_runtime"] == "unset"
    finally:
        torch.set_num_threads(previous)


def test_configure_threads_sets_a_wait_policy_when_asked_and_keeps_one_already_set(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    applied = configure_threads(None)
    assert applied["omp_wait_policy"] == "ACTIVE" and applied["requested_threads"] is None
    assert applied["torch_threads"] == torch.get_num_threads()
    applied = configure_threads(None, "PASSIVE")
    assert os.environ["OMP_WAIT_POLICY"] == applied["omp_wait_policy"] == "PASSIVE"
    # torch loaded long before: what its runtime read cannot be known from here
    assert applied["omp_wait_policy_runtime"] is None
    with pytest.raises(ValueError, match="num_threads"):
        configure_threads(0)
    with pytest.raises(ValueError, match="wait_policy"):
        configure_threads(None, "passive-ish")


def run_fresh_python(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_wait_policy_reaches_the_runtime_only_when_set_before_torch_loads():
    call = ("import json; from engines.environment import configure_threads; "
            "print(json.dumps(configure_threads(1, 'PASSIVE')))")  # fmt: skip
    assert run_fresh_python(call)["omp_wait_policy_runtime"] == "PASSIVE"
    assert run_fresh_python("import torch; " + call)["omp_wait_policy_runtime"] == "unset"
    unset = run_fresh_python(call.replace(", 'PASSIVE'", ""))
    assert unset["omp_wait_policy"] == unset["omp_wait_policy_runtime"] == "unset"
