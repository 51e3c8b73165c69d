"""What attention needs to know about one forward pass over a packed batch of new tokens.

Tokens are packed `[T]`: first the decode tokens (one per decoding sequence), then the new tokens of each
prefilling sequence in order. Device tensors feed the kernels; the host copies let torch code loop
without a device sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(slots=True)
class AttnMetadata:
    slot_mapping: torch.Tensor  # [T] int64 cache slot of each new token (-1 = padding, not stored)
    num_decode_tokens: int
    decode_block_tables: torch.Tensor  # [Bd, max_blocks] int32
    decode_context_lens: torch.Tensor  # [Bd] int32, including the new token
    prefill_block_tables: torch.Tensor  # [Bp, max_blocks] int32
    prefill_cu_seqlens_q: torch.Tensor  # [Bp+1] int32, offsets inside the prefill part
    prefill_context_lens: torch.Tensor  # [Bp] int32, including the new tokens
    decode_context_lens_host: list[int] = field(default_factory=list)
    prefill_q_lens_host: list[int] = field(default_factory=list)
    prefill_context_lens_host: list[int] = field(default_factory=list)
    backend_state: Any = None  # per-pass precomputation of the attention backend, shared by all layers

    @property
    def num_prefill_tokens(self) -> int:
        return sum(self.prefill_q_lens_host)


def _padded_tables(tables: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max((len(t) for t in tables), default=0)
    padded = [t + [-1] * (width - len(t)) for t in tables]
    return torch.tensor(padded, dtype=torch.int32, device=device).view(len(tables), width)


def build_metadata(
    slot_mapping: list[int],
    decode_tables: list[list[int]],
    decode_lens: list[int],
    prefill_tables: list[list[int]],
    prefill_q_lens: list[int],
    prefill_lens: list[int],
    device: torch.device,
) -> AttnMetadata:
    """Metadata from host lists; the caller orders tokens decodes-first as described above."""
    cu = [0]
    for q_len in prefill_q_lens:
        cu.append(cu[-1] + q_len)
    return AttnMetadata(
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64, device=device),
        num_decode_tokens=len(decode_lens),
        decode_block_tables=_padded_tables(decode_tables, device),
        decode_context_lens=torch.tensor(decode_lens, dtype=torch.int32, device=device),
        prefill_block_tables=_padded_tables(prefill_tables, device),
        prefill_cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        prefill_context_lens=torch.tensor(prefill_lens, dtype=torch.int32, device=device),
        decode_context_lens_host=list(decode_lens),
        prefill_q_lens_host=list(prefill_q_lens),
        prefill_context_lens_host=list(prefill_lens),
    )
