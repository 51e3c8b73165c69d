"""Rotary position embeddings: inverse frequencies (with Llama-3 / linear scaling) and their application.

Uses the "rotate half" layout of HF checkpoints: dimension i pairs with i + head_dim/2.
"""

from __future__ import annotations

import math

import torch

from engines.own.architecture import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.scaling_type == "linear":
        return inv_freq / rope.factor
    if rope.scaling_type == "llama3":
        return _llama3_scaled(inv_freq, rope)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    # Long wavelengths are slowed by `factor`, short ones kept, the band between blended smoothly.
    low_freq_wavelen = rope.original_max_position / rope.low_freq_factor
    high_freq_wavelen = rope.original_max_position / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, blended, scaled)


def cos_sin_table(rope: RopeConfig, head_dim: int, max_position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 `[max_position, head_dim]` cos and sin tables, indexed by absolute position."""
    inv_freq = inverse_frequencies(rope, head_dim)
    positions = torch.arange(max_position, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """`sin` with its first half negated: rotate-half's `cat(-x2, x1) * sin` becomes `roll(x) * signed_sin`,
    which is exact (negation does not round) and saves the negation per call."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `[T, heads, head_dim]` by per-token `cos`, `signed_sin(sin)` `[T, head_dim]`."""
    rotated = x.roll(x.shape[-1] // 2, dims=-1)  # [x2, x1]
    out = x * cos[:, None, :]
    out += rotated * sin_signed[:, None, :]
    return out
