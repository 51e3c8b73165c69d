"""engine=hf quantized baselines as a user runs them: cells through the harness whose worker runs in the
quantization venv (engines/hf/install_quant.sh, `engine.python=`), each checked for smaller weights and a
perplexity close to the unquantized base on the same real text. Skipped when that venv is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

QUANT_PYTHON = Path(os.environ.get("INFERMATRIX_CACHE") or Path.home() / ".cache" / "infermatrix") / "venvs" / "hf-quant" / "bin" / "python"
TINY = ["tracker=none", "scenario.repeats=2", "scenario.warmup=0", "workload.input_len.mean=8",
        "workload.output_len.mean=4", "threads=1"]  # fmt: skip
# (weight bytes at most this fraction of fp32, perplexity at most this multiple of fp32's), from the sweep in
# reports/quant-cpu-2026-11-30.md: torchao int8 +0.02%, bitsandbytes int8 +2.5%, nf4 +33% on this model
BOUNDS = {"torchao_int8": (0.45, 1.02), "int8": (0.45, 1.05), "nf4": (0.35, 1.5)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not QUANT_PYTHON.is_file(), reason=f"no quantization venv at {QUANT_PYTHON}: run `bash engines/hf/install_quant.sh`"),
]


def hf_cell(tmp_path: Path, data: Path, quant: str) -> dict:
    run = tmp_path / quant
    cmd = [sys.executable, "-m", "harness.cli", "engine=hf", f"engine.python={QUANT_PYTHON}", f"technique.quant={quant}",
           f"eval.data_dir={data}", *TINY, f"store={tmp_path / 'store'}", f"hydra.run.dir={run}"]  # fmt: skip
    subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600)
    return json.loads((run / "result.json").read_text())


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_data) -> dict:
    result = hf_cell(tmp_path_factory.mktemp("base"), shared_data, "none")
    assert result["status"] == "ok", result.get("reason")
    return result


@pytest.mark.parametrize("quant", sorted(BOUNDS))
def test_a_quantized_hf_cell_shrinks_the_weights_and_keeps_the_perplexity_near_the_base(tmp_path, shared_data, base, quant):
    result = hf_cell(tmp_path, shared_data, quant)
    assert result["status"] == "ok", result.get("reason")
    assert result["technique_applied"]["quant"] == quant
    max_bytes, max_ppl = BOUNDS[quant]
    assert result["quantization"]["weight_bytes"] <= max_bytes * base["quantization"]["weight_bytes"]
    ppl, base_ppl = result["perplexity"]["perplexity"], base["perplexity"]["perplexity"]
    assert base_ppl <= ppl * 1.02 and ppl <= max_ppl * base_ppl  # quantization never helps much, and hurts boundedly
