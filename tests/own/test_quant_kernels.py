"""Our Triton weight-only matmuls equal the torch path (the dequantized weight's matmul, and torch's own int8/int4
CPU kernels through the layers). On CPU the kernels need the Triton interpreter, switched on before triton is
imported, so the Triton class re-runs in a child pytest with TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import (
    INTERPRETED,
    ON_GPU,
    assert_class_passes_under_the_interpreter,
)

from engines.own.quant.formats import (
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)
from engines.own.quant.linear import Int4Linear, Int8Linear

DEVICE = "cuda" if ON_GPU else "cpu"
SHAPES = [(960, 576), (576, 1536), (7, 100), (33, 130)]  # SmolLM2's widths, and sizes no tile divides


def case(rows: int, cols: int, tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) * 0.05, torch.randn(tokens, cols, generator=gen)


def test_triton_quant_kernels_match_torch_under_the_interpreter():
    assert_class_passes_under_the_interpreter(__file__, "TestTritonQuantMatmul")


@pytest.mark.skipif(not (ON_GPU or INTERPRETED), reason="on CPU this class runs in the interpreter child process")
class TestTritonQuantMatmul:
    @pytest.mark.parametrize("rows,cols", SHAPES)
    @pytest.mark.parametrize("tokens", [1, 17])
    def test_int8_kernel_equals_the_dequantized_matmul(self, rows, cols, tokens):
        w, x = case(rows, cols, tokens)
        q = quantize_int8(w)
        layer = Int8Linear(q, None, torch.float32, "triton").to(DEVICE)
        expected = x @ dequantize_int8(q).T
        torch.testing.assert_close(layer(x.to(DEVICE)).cpu(), expected, rtol=1e-4, atol=1e-4)
        if not ON_GPU:  # and torch's own CPU kernel gives the same numbers (it computes in bfloat16)
            torch.testing.assert_close(layer(x), Int8Linear(q, None, torch.float32, "torch")(x), rtol=2e-2, atol=2e-2)

    @pytest.mark.parametrize("rows,cols", SHAPES)
    @pytest.mark.parametrize("group", [32, 64, 128])
    @pytest.mark.parametrize("tokens", [1, 17])
    def test_int4_kernel_equals_the_dequantized_matmul(self, rows, cols, group, tokens):
        w, x = case(rows, cols, tokens)
        q = quantize_int4(w, group)
        layer = Int4Linear(q, None, torch.float32, "triton").to(DEVICE)
        expected = x @ dequantize_int4(q).T
        torch.testing.assert_close(layer(x.to(DEVICE)).cpu(), expected, rtol=1e-4, atol=1e-4)
        if not ON_GPU:
            torch.testing.assert_close(layer(x), Int4Linear(q, None, torch.float32, "torch")(x), rtol=2e-2, atol=2e-2)

    def test_half_precision_activations_and_a_bias(self):
        w, x = case(64, 96, 3)
        bias = torch.randn(64)
        half = torch.bfloat16 if ON_GPU else torch.float16  # the 3.9 interpreter's bf16 dot is wrong (see test_kernels)
        for make, ref in ((lambda: Int8Linear(quantize_int8(w), bias, half, "triton"), dequantize_int8(quantize_int8(w))),
                          (lambda: Int4Linear(quantize_int4(w, 32), bias, half, "triton"), dequantize_int4(quantize_int4(w, 32)))):
            out = make().to(DEVICE)(x.to(DEVICE, half))
            assert out.dtype == half
            torch.testing.assert_close(out.float().cpu(), x @ ref.T + bias, rtol=3e-2, atol=3e-2)
