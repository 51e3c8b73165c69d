"""Triton weight-only matmuls: `out = x @ dequantize(w).T`, dequantizing each weight tile inside the loop, so
the weights cross memory as int8 or packed int4 (the point of weight-only quantization at small batch).

Formats are those of engines/own/quant/formats.py: int8 codes `[N, K]` with a scale per row; int4 codes packed
two per byte along K (`[N, K_padded / 2]`, even input in the low nibble) with a scale and a low value per row and
group. Runs on CUDA, or on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1 before importing triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16  # tl.dot needs >= 16 rows; a decode step's single row is masked into the tile
BLOCK_N = 64
INT8_BLOCK_K = 64


@triton.jit
def _int8_matmul_kernel(
    x_ptr, w_ptr, scale_ptr, out_ptr, M, N, K, stride_xm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=(rows[:, None] < M) & (ks[None, :] < K),
                    other=0.0)  # fmt: skip
        w = tl.load(w_ptr + cols[None, :] * K + ks[:, None], mask=(cols[None, :] < N) & (ks[:, None] < K), other=0)
        acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)  # int8 codes are exact in any float type
    scale = tl.load(scale_ptr + cols, mask=cols < N, other=0.0)
    acc = acc * scale[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))  # fmt: skip


@triton.jit
def _int4_matmul_kernel(
    x_ptr, w_ptr, scale_ptr, low_ptr, out_ptr, M, N, K, GROUPS, stride_xm, stride_om,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    pairs = tl.arange(0, GROUP // 2)
    row_ok, col_ok = rows[:, None] < M, cols[None, :] < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for g in range(0, GROUPS):
        # even inputs meet low nibbles and odd inputs high ones: two dots instead of interleaving the codes
        even = g * GROUP + 2 * pairs
        x_even = tl.load(x_ptr + rows[:, None] * stride_xm + even[None, :], mask=row_ok & (even[None, :] < K), other=0.0)
        x_odd = tl.load(x_ptr + rows[:, None] * stride_xm + even[None, :] + 1, mask=row_ok & (even[None, :] + 1 < K),
                        other=0.0)  # fmt: skip
        packed = tl.load(w_ptr + cols[None, :] * (GROUPS * GROUP // 2) + g * (GROUP // 2) + pairs[:, None],
                         mask=col_ok, other=0)  # fmt: skip
        scale = tl.load(scale_ptr + cols * GROUPS + g, mask=cols < N, other=0.0)[None, :]
        low = tl.load(low_ptr + cols * GROUPS + g, mask=cols < N, other=0.0)[None, :]
        w_even = ((packed & 0xF).to(tl.float32) * scale + low).to(x_even.dtype)
        w_odd = ((packed >> 4).to(tl.float32) * scale + low).to(x_even.dtype)
        acc += tl.dot(x_even, w_even, input_precision=DOT_PRECISION)
        acc += tl.dot(x_odd, w_odd, input_precision=DOT_PRECISION)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=row_ok & col_ok)


def _dot_precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"  # exact fp32 products; other dtypes ignore it


def _rows(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def int8_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x` `[..., K]` times int8 `codes` `[N, K]` (contiguous) with float32 row `scale` `[N]` -> `[..., N]`."""
    flat = _rows(x)
    (m, k), n = flat.shape, codes.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _int8_matmul_kernel[grid](flat, codes, scale, out, m, n, k, flat.stride(0), out.stride(0),
                              BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=INT8_BLOCK_K,
                              DOT_PRECISION=_dot_precision(x))  # fmt: skip
    return out.view(*x.shape[:-1], n)


def int4_matmul(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, group_size: int
) -> torch.Tensor:
    """`x` `[..., K]` times int4 codes packed `[N, K_padded / 2]` with float32 `scale` and `low` `[N, groups]`."""
    flat = _rows(x)
    (m, k), (n, groups) = flat.shape, scale.shape
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _int4_matmul_kernel[grid](flat, packed, scale, low, out, m, n, k, groups, flat.stride(0), out.stride(0),
                              GROUP=group_size, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                              DOT_PRECISION=_dot_precision(x))  # fmt: skip
    return out.view(*x.shape[:-1], n)
