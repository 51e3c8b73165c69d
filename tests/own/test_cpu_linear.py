"""Our bfloat16 linear layer for AVX512-BF16 CPUs (kernels/cpu_linear.cpp, `PairPackedLinear`): each output is the
fp32 sum of exact bf16 products rounded once to bf16, so it lies within half a bf16 step of the fp32 matmul; any
shape (odd K, N not a multiple of the 32-row task), with or without bias, any row stride; and a row's output does
not depend on the rows batched with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engines.own.kernels import cpu_kernels
from engines.own.quant.linear import PackedLinear, PairPackedLinear, cpu_packed_linear

pytestmark = pytest.mark.skipif(
    cpu_kernels.missing_toolchain() is not None or not cpu_kernels.bf16_linear_available(),
    reason="needs the C++ kernels built on a CPU with AVX512-BF16",
)


def _weights(n: int, k: int, bias: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    return w, torch.randn(n, generator=gen).to(torch.bfloat16) if bias else None


@pytest.mark.parametrize("n, k", [(960, 576), (576, 1536), (17, 9), (33, 64), (100, 131), (1, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_outputs_are_the_fp32_matmul_rounded_once_to_bf16(n, k, bias):
    w, b = _weights(n, k, bias)
    layer = PairPackedLinear(w, b)
    for rows in (1, 3, 8, 9, 40):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
        exact = F.linear(x.double(), w.double(), None if b is None else b.double())
        out = layer(x)
        assert out.shape == (rows, n) and out.dtype == torch.bfloat16
        # half a bf16 step of rounding, plus fp32 accumulation error (far smaller) over sum |x||w|
        bound = exact.abs() * 2.0**-8 + 1e-5 * (x.double().abs() @ w.double().abs().T)
        assert ((out.double() - exact).abs() <= bound).all()


def test_a_row_gives_the_same_bits_alone_as_in_any_batch():
    w, b = _weights(960, 576, bias=True)
    layer = PairPackedLinear(w, b)
    x = torch.randn(33, 576, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    batched = layer(x)
    for row in (0, 7, 8, 32):
        torch.testing.assert_close(layer(x[row : row + 1]), batched[row : row + 1], rtol=0, atol=0)
    torch.testing.assert_close(layer(x[5:14]), batched[5:14], rtol=0, atol=0)


def test_strided_rows_and_leading_dimensions_are_read_in_place():
    w, _ = _weights(64, 96, bias=False)
    layer = PairPackedLinear(w, None)
    x = torch.randn(4, 3, 96, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    torch.testing.assert_close(layer(x.transpose(0, 1)), layer(x.transpose(0, 1).contiguous()), rtol=0, atol=0)
    assert layer(x).shape == (4, 3, 64)


def test_bf16_weights_take_this_kernel_and_fp32_ones_onednn():
    w, _ = _weights(64, 64, bias=False)
    layer, layout = cpu_packed_linear(w, None, batch_hint=8)
    assert isinstance(layer, PairPackedLinear) and layout == "bf16_pairs"
    layer, layout = cpu_packed_linear(w.float(), None, batch_hint=8)
    assert isinstance(layer, PackedLinear) and layout == "onednn_packed"


def test_the_kernel_refuses_what_it_cannot_read():
    w, _ = _weights(64, 64, bias=False)
    packed = cpu_kernels.pack_bf16_pairs(w)
    with pytest.raises(RuntimeError, match="bf16 rows"):
        cpu_kernels.bf16_linear(torch.ones(2, 64), packed, None, 64)
    with pytest.raises(RuntimeError, match="do not match"):
        cpu_kernels.bf16_linear(torch.ones(2, 62, dtype=torch.bfloat16), packed, None, 64)
