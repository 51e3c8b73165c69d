"""Triton kernel tests on a CPU machine: TRITON_INTERPRET must be set before triton is imported, so a test
class of kernels runs in a child pytest with it set, and its parent asserts that every case there passed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ON_GPU = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
REPO = Path(__file__).resolve().parents[2]


def assert_class_passes_under_the_interpreter(test_file: str, class_name: str) -> None:
    if ON_GPU or INTERPRETED:
        pytest.skip("the Triton class runs directly in this process")
    pytest.importorskip("triton")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{test_file}::{class_name}"],
        cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    lines = run.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary
