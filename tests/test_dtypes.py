"""`model.dtype=auto`: bfloat16 where the device computes it natively, else float32 on CPU; explicit names pass."""

from __future__ import annotations

import pytest
import torch

from engines.dtypes import resolve_dtype


def test_auto_on_cpu_follows_the_cpus_bfloat16_instructions():
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    dtype, reason = resolve_dtype("auto", "cpu")
    assert dtype == ("bfloat16" if native else "float32")
    assert "CPU" in reason


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_an_explicit_dtype_is_applied_as_requested(name):
    assert resolve_dtype(name, "cpu") == (name, "requested")


def test_an_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="dtype 'fp8' is not supported"):
        resolve_dtype("fp8", "cpu")
