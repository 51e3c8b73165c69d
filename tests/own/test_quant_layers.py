"""Quantized linear layers: the formats round-trip within their step, and each layer equals `x @ W.T` for the
dequantized weight W it stands for, on random shapes including widths that are no multiple of the group size.
On the CPU the layers compute in bfloat16 (torch's kernels have no fast float32 path), hence BF16_TOL."""

from __future__ import annotations

import pytest
import torch

from engines.own.quant.formats import (
    dequantize_int4,
    dequantize_int8,
    pack_nibbles,
    quantize_int4,
    quantize_int8,
    unpack_nibbles,
)
from engines.own.quant.linear import Int4Linear, Int8Linear, Linear

# (out, in): SmolLM2's projections, odd widths (576 = 4.5 x 128), a row count no multiple of 16, and tiny ones
SHAPES = [(960, 576), (576, 1536), (7, 100), (33, 130), (1, 64)]
BF16_TOL = dict(rtol=2e-2, atol=2e-2)  # bfloat16 activations and scales: 8 significant bits


def weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


def test_int8_codes_are_within_half_a_step_of_the_weight():
    w = weight(33, 130)
    q = quantize_int8(w)
    assert q.codes.dtype == torch.int8 and q.scale.shape == (33,)
    assert ((dequantize_int8(q) - w).abs() <= q.scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_codes_are_within_half_a_step_of_the_weight_and_padding_is_dropped(group):
    w = weight(33, 130)
    q = quantize_int4(w, group)
    assert q.codes.shape == (33, -(-130 // group) * group) and int(q.codes.max()) <= 15
    steps = q.scale.repeat_interleave(group, dim=1)[:, :130]
    assert ((dequantize_int4(q) - w).abs() <= steps / 2 + 1e-6).all()


def test_nibble_packing_round_trips():
    codes = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    assert pack_nibbles(codes).shape == (5, 32)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("tokens", [1, 5])
def test_int8_layer_equals_the_dequantized_matmul(rows, cols, tokens):
    w, x = weight(rows, cols), torch.randn(tokens, cols)
    q = quantize_int8(w)
    bias = torch.randn(rows)
    layer = Int8Linear(q, bias, torch.float32, "torch")
    torch.testing.assert_close(layer(x), x @ dequantize_int8(q).T + bias, **BF16_TOL)


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("tokens", [1, 5])
def test_int4_layer_equals_the_dequantized_matmul(rows, cols, group, tokens):
    w, x = weight(rows, cols), torch.randn(tokens, cols)
    q = quantize_int4(w, group)
    layer = Int4Linear(q, None, torch.float32, "torch")
    torch.testing.assert_close(layer(x), x @ dequantize_int4(q).T, **BF16_TOL)


def test_layers_keep_leading_dimensions_and_shrink_the_weights():
    w, x = weight(960, 576), torch.randn(2, 3, 576)
    fp = Linear(576, 960)
    fp.weight.data.copy_(w)
    int8, int4 = Int8Linear(quantize_int8(w), None, torch.float32, "torch"), Int4Linear(quantize_int4(w, 64), None, torch.float32, "torch")
    assert int8(x).shape == int4(x).shape == (2, 3, 960)
    assert fp.weight_bytes() == 960 * 576 * 4
    # a byte per weight and a bfloat16 scale per row; half a byte per weight and two bfloat16 per group
    assert int8.weight_bytes() == 960 * 576 + 960 * 2
    assert int4.weight_bytes() == 960 * 576 // 2 + 2 * 960 * (576 // 64) * 2


def test_float32_layers_compute_in_bfloat16_on_the_cpu_and_return_float32():
    layer = Int8Linear(quantize_int8(weight(16, 32)), None, torch.float32, "torch")
    assert layer.compute_dtype == torch.bfloat16 and layer.scale.dtype == torch.bfloat16
    assert layer(torch.randn(2, 32)).dtype == torch.float32


def test_bfloat16_activations_run_through_both_kernels():
    w, x = weight(64, 128), torch.randn(3, 128)
    for layer, ref in ((Int8Linear(quantize_int8(w), None, torch.bfloat16, "torch"), dequantize_int8(quantize_int8(w))),
                       (Int4Linear(quantize_int4(w, 32), None, torch.bfloat16, "torch"), dequantize_int4(quantize_int4(w, 32)))):
        out = layer(x.bfloat16())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), x @ ref.T, rtol=3e-2, atol=3e-2)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend 'cuda'"):
        Int8Linear(quantize_int8(weight(4, 8)), None, torch.float32, "cuda")
