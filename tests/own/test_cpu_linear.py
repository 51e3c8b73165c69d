"""Our float linear layer for AVX-512 and AVX2 CPUs (kernels/cpu_linear.cpp, `TilePackedLinear`): each output is
an fp32 sum of the products over k rounded once to the dtype, so it lies within the error bound of a sum in order;
any shape (odd K, N not a multiple of the 32-row task), with or without bias, any row stride; a row's output does
not depend on the rows batched with it; the engine packs with it wherever it runs; bf16 off AMX gives the bits of
vdpbf16ps's ordered sum; and bf16 runs on AMX tiles wherever the CPU has them. fp32 split into three bf16 terms on AMX tiles (`split=True`) lies within the bound of an
fp32 sum of its six products in order, keeps a row's bits whatever its batch, and is refused where it cannot run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engines.own.kernels import cpu_kernels
from engines.own.quant.linear import TilePackedLinear, cpu_linear_instructions, cpu_packed_linear

DTYPES = [
    pytest.param(dtype, marks=pytest.mark.skipif(
        cpu_kernels.missing_toolchain() is not None or not cpu_kernels.packed_linear_available(dtype),
        reason=f"needs the C++ kernels built on a CPU with AVX2 or AVX-512 ({dtype})"))
    for dtype in (torch.float32, torch.bfloat16)
]  # fmt: skip
AMX = pytest.mark.skipif(cpu_kernels.missing_toolchain() is not None or not cpu_kernels.packed_linear_amx(),
                         reason="needs the C++ kernels on a CPU with AMX-BF16")  # fmt: skip
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}


def _weights(n: int, k: int, bias: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(n * k)
    w = torch.randn(n, k, generator=gen).to(dtype)
    return w, torch.randn(n, generator=gen).to(dtype) if bias else None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", [(960, 576), (576, 1536), (17, 9), (33, 64), (100, 131), (1, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_outputs_are_within_an_ordered_fp32_sum_rounded_once(n, k, bias, dtype):
    w, b = _weights(n, k, bias, dtype)
    layer = TilePackedLinear(w, b)
    for rows in (1, 3, 8, 9, 40):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).to(dtype)
        exact = F.linear(x.double(), w.double(), None if b is None else b.double())
        out = layer(x)
        assert out.shape == (rows, n) and out.dtype == dtype
        # rounding to the dtype, plus an fp32 sum of k + 1 terms (the bias) over sum |x||w| + |b|
        magnitude = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
        bound = exact.abs() * UNIT_ROUNDOFF[dtype] + (k + 1) * 2.0**-24 * magnitude * (1 + UNIT_ROUNDOFF[dtype])
        assert ((out.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_row_gives_the_same_bits_alone_as_in_any_batch(dtype):
    w, b = _weights(960, 576, True, dtype)
    layer = TilePackedLinear(w, b)
    x = torch.randn(33, 576, generator=torch.Generator().manual_seed(1)).to(dtype)
    batched = layer(x)
    for row in (0, 7, 8, 32):
        torch.testing.assert_close(layer(x[row : row + 1]), batched[row : row + 1], rtol=0, atol=0)
    torch.testing.assert_close(layer(x[5:14]), batched[5:14], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows_and_leading_dimensions_are_read_in_place(dtype):
    w, _ = _weights(64, 96, False, dtype)
    layer = TilePackedLinear(w, None)
    x = torch.randn(4, 3, 96, generator=torch.Generator().manual_seed(2)).to(dtype)
    torch.testing.assert_close(layer(x.transpose(0, 1)), layer(x.transpose(0, 1).contiguous()), rtol=0, atol=0)
    assert layer(x).shape == (4, 3, 64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_engine_packs_with_this_kernel_wherever_it_runs(dtype):
    layer, layout = cpu_packed_linear(_weights(64, 64, False, dtype)[0], None, batch_hint=8)
    assert isinstance(layer, TilePackedLinear) and layout == "cpp_tiles"


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernel_refuses_what_it_cannot_read(dtype):
    packed = cpu_kernels.pack_for_linear(_weights(64, 64, False, dtype)[0])
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    with pytest.raises(RuntimeError, match="in x's dtype"):
        cpu_kernels.packed_linear(torch.ones(2, 64, dtype=other), packed, None, 64)
    with pytest.raises(RuntimeError, match="do not match"):
        cpu_kernels.packed_linear(torch.ones(2, 30, dtype=dtype), packed, None, 64)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        cpu_kernels.packed_linear(torch.ones(2, 64, dtype=torch.float16), packed, None, 64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bf16_runs_on_amx_tiles_wherever_the_cpu_has_them(dtype):
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    amx = "amx_tile" in flags and "amx_bf16" in flags
    assert cpu_kernels.packed_linear_amx() == amx
    assert cpu_kernels.packed_linear_avx2() == ("avx512f" not in flags)
    if "avx512f" not in flags:
        expected = "AVX2 FMA"
    else:
        expected = {torch.float32: "AVX-512 FMA", torch.bfloat16: "AMX-BF16" if amx else "AVX512-BF16"}[dtype]
    assert cpu_linear_instructions(dtype).startswith(expected)


@pytest.mark.parametrize("dtype", [p for p in DTYPES if p.values[0] == torch.bfloat16])
@pytest.mark.skipif(cpu_kernels.missing_toolchain() is None and cpu_kernels.packed_linear_amx(),
                    reason="AMX tiles sum in their own order")  # fmt: skip
@pytest.mark.parametrize("k", [64, 37])
def test_bf16_gives_the_bits_of_the_fp32_sum_over_k_pairs_odd_first(dtype, k):
    # vdpbf16ps (AVX512-BF16) adds each pair's k odd, then k even; the AVX2 path does the same. A product of two
    # bf16 is exact in fp32, so adding it after multiplying rounds once, as an FMA does.
    w, b = _weights(40, k, True, dtype)
    x = torch.randn(7, k, generator=torch.Generator().manual_seed(3)).to(dtype)
    acc = b.float().expand(7, 40).clone()
    for even in range(0, k, 2):
        for j in (even + 1, even):
            if j < k:
                acc = acc + x[:, j : j + 1].float() * w[:, j].float()
    torch.testing.assert_close(TilePackedLinear(w, b)(x), acc.to(dtype), rtol=0, atol=0)


@AMX
@pytest.mark.parametrize("n, k", [(960, 576), (576, 1536), (17, 32), (100, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_split_fp32_is_within_an_fp32_sum_of_its_six_products(n, k, bias):
    w, b = _weights(n, k, bias, torch.float32)
    layer = TilePackedLinear(w, b, split=True)
    for rows in (1, 9, 33, 70):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        exact = F.linear(x.double(), w.double(), None if b is None else b.double())
        out = layer(x)
        assert out.shape == (rows, n) and out.dtype == torch.float32
        # the terms left out: under 3 * 2^-27 of each |x||w|; then an fp32 sum of 6k products and the bias, each
        # product's terms within 2^-8 of |x||w|
        magnitude = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
        bound = (3 * 2.0**-27 + (6 * k + 1) * 2.0**-24 * (1 + 2.0**-7)) * magnitude
        assert ((out.double() - exact).abs() <= bound).all()
        # and typically as close as torch's own fp32 matmul (three products alone were 14-71x further, RMS)
        rms = lambda y: (y.double() - exact).pow(2).mean().sqrt()  # noqa: E731
        assert rms(out) <= 2 * rms(F.linear(x, w, b))


@AMX
def test_split_fp32_gives_a_row_the_same_bits_alone_as_in_any_batch():
    w, b = _weights(960, 576, True, torch.float32)
    layer = TilePackedLinear(w, b, split=True)
    x = torch.randn(33, 576, generator=torch.Generator().manual_seed(1))
    batched = layer(x)
    for row in (0, 15, 16, 32):
        torch.testing.assert_close(layer(x[row : row + 1]), batched[row : row + 1], rtol=0, atol=0)
    torch.testing.assert_close(layer(x[5:30]), batched[5:30], rtol=0, atol=0)


@AMX
def test_split_fp32_is_refused_where_it_cannot_run():
    w, _ = _weights(64, 64, False, torch.float32)
    packed = cpu_kernels.pack_for_linear_split(w)
    with pytest.raises(RuntimeError, match="K a multiple of 32"):
        cpu_kernels.packed_linear_split(torch.ones(2, 48), packed, None, 64)
    with pytest.raises(RuntimeError, match="K as x's"):
        cpu_kernels.packed_linear_split(torch.ones(2, 96), packed, None, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        cpu_kernels.pack_for_linear_split(torch.ones(64, 48))
    # a layer whose K the split cannot take keeps the FMA kernel
    assert not cpu_packed_linear(torch.ones(64, 48), None, batch_hint=8, split=True)[0].split
    assert cpu_linear_instructions(torch.float32, split=True).startswith("AMX-BF16 tiles, fp32 as three bf16 terms")
