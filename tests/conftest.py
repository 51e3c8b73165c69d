"""Shared fixtures. Tests run with one torch thread: the CPU has two cores and CI runs alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP
import torch  # noqa: E402

torch.set_num_threads(1)

# INFERMATRIX_SHARED_DATA, else beside the checkout (../shared/data), else the workplace's copy
# (a fresh clone elsewhere, as CI makes, has no ../shared)
_CANDIDATES = [os.environ.get("INFERMATRIX_SHARED_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data",
               "/work/shared/data"]  # fmt: skip
SHARED_DATA = next((Path(c) for c in _CANDIDATES if c and Path(c).is_dir()), Path(_CANDIDATES[1]))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once to a float32 safetensors folder."""
    from harness.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real GSM8K and MMLU files beside the checkout (never copied into the project)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
