"""Quantized weight formats and their float reference.

int8: symmetric, one float scale per output row: w ~= q * scale, q in [-127, 127].
int4: asymmetric, per group of `group_size` consecutive inputs of a row: w ~= q * scale + low, q in [0, 15],
where `low` is the group's minimum. Inputs are zero-padded to a multiple of the group size, so any width works
(SmolLM2's 576 with groups of 128 becomes 640); padded columns meet zero inputs and add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_LEVELS = 15


@dataclass(slots=True)
class Int8Weight:
    codes: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N]


@dataclass(slots=True)
class Int4Weight:
    codes: torch.Tensor  # uint8 [N, K_padded], values 0..15 (one code per byte; layers pack them)
    scale: torch.Tensor  # float32 [N, groups]
    low: torch.Tensor  # float32 [N, groups]: the value code 0 stands for
    in_features: int  # K before padding
    group_size: int


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # an all-zero row keeps a usable scale
    codes = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(codes, scale)


def dequantize_int8(q: Int8Weight) -> torch.Tensor:
    return q.codes.float() * q.scale[:, None]


def padded_width(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size) * group_size


def quantize_int4(weight: torch.Tensor, group_size: int) -> Int4Weight:
    rows, k = weight.shape
    width = padded_width(k, group_size)
    w = torch.nn.functional.pad(weight.float(), (0, width - k)).view(rows, width // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / INT4_LEVELS).clamp(min=1e-12)  # a constant group: every code decodes to `low`
    codes = torch.round((w - low[..., None]) / scale[..., None]).clamp(0, INT4_LEVELS).to(torch.uint8)
    return Int4Weight(codes.view(rows, width), scale, low, k, group_size)


def dequantize_int4(q: Int4Weight) -> torch.Tensor:
    """The float weight `[N, K]` the codes stand for (padding dropped)."""
    rows, width = q.codes.shape
    groups = q.codes.view(rows, width // q.group_size, q.group_size).float()
    w = groups * q.scale[..., None] + q.low[..., None]
    return w.view(rows, width)[:, : q.in_features]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes `[N, K]` (K even) -> `[N, K/2]`: byte j holds code 2j in its low and 2j+1 in its high nibble."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).view(packed.shape[0], -1)
