"""experiments/gpu_check.sh runs on a GPU machine later: on CPU its benchmark must still run end to end,
say which GPU parts it skipped, and measure the parts a CPU can."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "experiments/gpu_check.sh")]).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_the_benchmark_runs_on_cpu_and_names_what_it_skipped():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = ["--layers", "1", "--prompt-len", "8", "--decode-tokens", "4", "--gen-len", "4", "--num-requests", "2",
            "--repeats", "1"]  # fmt: skip
    run = subprocess.run([sys.executable, str(REPO / "experiments/bench_gpu_own.py"), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for skipped in ("1. Triton kernel errors", "2. decode attention microbenchmark", "CUDA graphs vs eager"):
        assert f"SKIPPED (no CUDA device): {skipped}" in out
    assert "GB/s (read + write)" in out and "% of copy bandwidth" in out
    assert "own / hf:" in out
