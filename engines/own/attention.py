"""Attention backends over the paged KV cache, one interface: `prepare` once per pass, `forward` per layer.

- sdpa / torch: our own path: gather each sequence's K/V through block indices computed once per pass, then
  `scaled_dot_product_attention` (sdpa), or (torch) SDPA for decode and plain batched matmuls + softmax for
  prefill. SDPA must get 4-D inputs: on this CPU (2 threads, 9 heads) a 2,500-token causal prefill took
  95 ms with 4-D inputs and 827 ms with 3-D ones (the unfused math fallback). Decode of 8 rows over 400 keys:
  0.85 ms in SDPA vs 5.4 ms as matmuls (small strided batched matmuls).
- cpp (CPU): our C++ kernels (`engines/own/kernels/cpu_kernels.py`) for decodes and prefill chunks, reading
  the paged cache in place. A batch-32 decode step over ~430 keys, 2 threads (experiments/profile_decode.py):
  bf16 102-124 ms with sdpa, 80 ms with the first cpp decode kernel; fp32 220 ms vs 169 ms.
- triton: the kernels helper's functions (`engines/own/kernels`), decode and prefill parts apart.
- flash_attn is not offered: its varlen kernel over gathered K/V copied every context each layer, and its
  paged form wants blocks of 256 tokens; triton reads our paged cache in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engines.own.attn_metadata import AttnMetadata


class KernelAttention:
    """The kernels module API: store_kv, paged_decode_attention, paged_prefill_attention."""

    def __init__(self, kernels: Any) -> None:
        self.kernels = kernels

    def prepare(self, meta: AttnMetadata, block_size: int) -> None:
        return None

    def forward(self, q, k, v, k_cache, v_cache, meta: AttnMetadata, scale: float) -> torch.Tensor:
        self.kernels.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        nd = meta.num_decode_tokens
        parts = []
        if nd:
            parts.append(
                self.kernels.paged_decode_attention(
                    q[:nd], k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens, scale
                )
            )
        if q.shape[0] > nd:
            parts.append(
                self.kernels.paged_prefill_attention(
                    q[nd:], k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_seqlens_q,
                    meta.prefill_context_lens, scale,
                )
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts)


# Decodes run in groups of similar context length: one gather + SDPA call per group and layer, each padded to
# its longest context. A group grows (shortest first) while its padding stays under this share of what it reads.
DECODE_PADDING = 0.2


@dataclass(slots=True)
class GatherPlan:
    """Block indices (and masks) shared by every layer of one pass."""

    store_slots: torch.Tensor  # cache slot of every new token
    decode_groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (rows, blocks [n*mb], mask)
    prefill_blocks: list[torch.Tensor]  # per sequence, the blocks holding its context
    prefill_masks: list[torch.Tensor | None]  # per sequence [q_len, ctx] bool; None = plain causal


def decode_row_groups(lens: list[int], block_size: int) -> list[list[int]]:
    """Decode rows grouped by context length (shortest first). A group gathers every row's blocks up to its
    longest context; at most DECODE_PADDING of that is beyond what the rows' own blocks hold."""
    groups: list[list[int]] = []
    own_blocks = 0  # blocks the rows of the last group hold
    for row in sorted(range(len(lens)), key=lens.__getitem__):
        blocks = -(-lens[row] // block_size)  # rows come shortest first: this one is the group's longest
        if groups and blocks * (len(groups[-1]) + 1) * (1 - DECODE_PADDING) <= own_blocks + blocks:
            groups[-1].append(row)
            own_blocks += blocks
        else:
            groups.append([row])
            own_blocks = blocks
    return groups


def _decode_groups(meta: AttnMetadata, block_size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    lens = meta.decode_context_lens_host
    device = meta.slot_mapping.device
    groups = []
    for rows in decode_row_groups(lens, block_size):
        width = -(-max(lens[r] for r in rows) // block_size)
        rows_t = torch.tensor(rows, device=device)
        blocks = meta.decode_block_tables[rows_t, :width].long().clamp_min(0).flatten()
        positions = torch.arange(width * block_size, device=device)
        mask = positions[None, :] < meta.decode_context_lens[rows_t].long()[:, None]
        groups.append((rows_t, blocks, mask[:, None, None, :]))
    return groups


def gather_plan(meta: AttnMetadata, block_size: int) -> GatherPlan:
    """Our runner never pads (slot -1): graph runners that pad use the kernels backends."""
    device = meta.slot_mapping.device
    groups = _decode_groups(meta, block_size) if meta.num_decode_tokens else []
    prefill_blocks, prefill_masks = [], []
    for b, (q_len, ctx) in enumerate(zip(meta.prefill_q_lens_host, meta.prefill_context_lens_host)):
        prefill_blocks.append(meta.prefill_block_tables[b, : -(-ctx // block_size)].long())
        if q_len == ctx:
            prefill_masks.append(None)
            continue
        q_pos = torch.arange(ctx - q_len, ctx, device=device)
        prefill_masks.append(torch.arange(ctx, device=device)[None, :] <= q_pos[:, None])
    return GatherPlan(meta.slot_mapping, groups, prefill_blocks, prefill_masks)


def _sdpa_decode(query, keys, values, mask, scale):
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale)


def _sdpa_prefill(query, keys, values, mask, scale):
    """query [q_len, H, D]; keys/values [ctx, KVH, D]; mask [q_len, ctx] bool or None (plain causal)."""
    # 4-D inputs: with 3-D ones CPU SDPA falls back to its unfused math path (measured 8x slower at 2,500 tokens).
    # enable_gqa instead of repeating K/V per query head: the same bits, 3-6% faster on CPU at 128-512 tokens.
    attended = F.scaled_dot_product_attention(
        query.transpose(0, 1)[None], keys.transpose(0, 1)[None], values.transpose(0, 1)[None], attn_mask=mask,
        is_causal=mask is None, scale=scale, enable_gqa=True,
    )  # fmt: skip
    return attended[0].transpose(0, 1)


def _matmul_prefill(query, keys, values, mask, scale):
    """Same contract as `_sdpa_prefill`: grouped query heads share one K/V head through the row dimension,
    so GQA needs no K/V repeat, and three big batched matmuls replace CPU SDPA's slow prefill path."""
    q_len, heads, head_dim = query.shape
    ctx, kv_heads = keys.shape[0], keys.shape[1]
    group = heads // kv_heads
    if mask is None:
        mask = torch.ones(q_len, ctx, dtype=torch.bool, device=query.device).tril_(ctx - q_len)
    grouped = (query * scale).view(q_len, kv_heads, group, head_dim).permute(1, 2, 0, 3)
    scores = torch.bmm(grouped.reshape(kv_heads, group * q_len, head_dim), keys.permute(1, 2, 0))
    scores.view(kv_heads, group, q_len, ctx).masked_fill_(~mask, float("-inf"))
    attended = torch.bmm(scores.softmax(dim=-1), values.transpose(0, 1))  # [KVH, group * q_len, D]
    return attended.view(kv_heads, group, q_len, head_dim).permute(2, 0, 1, 3).reshape(q_len, heads, head_dim)


class GatheredAttention:
    """Gather each sequence's K/V through the per-pass `GatherPlan`, then attend with the given functions:
    `sdpa` uses scaled_dot_product_attention throughout; `torch` uses it for decode only, where its fused
    CPU kernel is fastest, and plain batched matmuls for prefill, where it is slow (measured, see module doc)."""

    def __init__(self, decode_fn, prefill_fn) -> None:
        self.decode_fn, self.prefill_fn = decode_fn, prefill_fn

    def prepare(self, meta: AttnMetadata, block_size: int) -> GatherPlan:
        return gather_plan(meta, block_size)

    def forward(self, q, k, v, k_cache, v_cache, meta: AttnMetadata, scale: float) -> torch.Tensor:
        plan: GatherPlan = meta.backend_state
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, plan.store_slots, k.to(k_cache.dtype))
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, plan.store_slots, v.to(v_cache.dtype))
        out = torch.empty_like(q)
        if meta.num_decode_tokens:
            self.attend_decodes(q, k_cache, v_cache, meta, scale, out)
        start = meta.num_decode_tokens
        for blocks, mask, q_len, ctx in zip(
            plan.prefill_blocks, plan.prefill_masks, meta.prefill_q_lens_host, meta.prefill_context_lens_host
        ):
            if ctx == q_len and k.dtype == k_cache.dtype:  # nothing cached before this chunk: attend to k, v as is
                keys, values = k[start : start + q_len], v[start : start + q_len]
            else:
                keys = k_cache.index_select(0, blocks).view(-1, num_kv_heads, head_dim)[:ctx]
                values = v_cache.index_select(0, blocks).view(-1, num_kv_heads, head_dim)[:ctx]
            out[start : start + q_len] = self.prefill_fn(q[start : start + q_len], keys, values, mask, scale)
            start += q_len
        return out

    def attend_decodes(self, q, k_cache, v_cache, meta: AttnMetadata, scale: float, out: torch.Tensor) -> None:
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        group = q.shape[1] // num_kv_heads
        for rows, blocks, mask in meta.backend_state.decode_groups:
            # Grouped query heads ride in the query-length dimension: no K/V repeat for GQA.
            query = q.index_select(0, rows).view(len(rows), num_kv_heads, group, head_dim)
            keys = k_cache.index_select(0, blocks).view(len(rows), -1, num_kv_heads, head_dim).transpose(1, 2)
            values = v_cache.index_select(0, blocks).view(len(rows), -1, num_kv_heads, head_dim).transpose(1, 2)
            attended = self.decode_fn(query, keys, values, mask, scale)
            out.index_copy_(0, rows, attended.reshape(len(rows), -1, head_dim))


class CppAttention(KernelAttention):
    """Our C++ CPU kernels (`kernels/cpu_kernels.py`) read the paged cache in place, decodes and prefill chunks
    alike; a decode-only step stores its new K/V rows in the decode call itself."""

    def forward(self, q, k, v, k_cache, v_cache, meta: AttnMetadata, scale: float) -> torch.Tensor:
        if meta.num_decode_tokens < q.shape[0]:
            return super().forward(q, k, v, k_cache, v_cache, meta, scale)
        return self.kernels.paged_decode_attention(q, k_cache, v_cache, meta.decode_block_tables,
                                                   meta.decode_context_lens, scale, k, v, meta.slot_mapping)  # fmt: skip


class SdpaAttention(GatheredAttention):
    def __init__(self) -> None:
        super().__init__(_sdpa_decode, _sdpa_prefill)


class TorchAttention(GatheredAttention):
    def __init__(self) -> None:
        super().__init__(_sdpa_decode, _matmul_prefill)


def make_attention(name: str, device: torch.device) -> KernelAttention | GatheredAttention:
    """The backend for a technique value; raises ValueError naming why it cannot run here."""
    if name == "sdpa":
        return SdpaAttention()
    if name == "torch":
        return TorchAttention()
    if name == "cpp":
        if device.type != "cpu":
            raise ValueError("cpp attention runs on the CPU only")
        from engines.own.kernels import cpu_kernels

        try:
            cpu_kernels.extension()
        except (ImportError, OSError, RuntimeError) as exc:
            raise ValueError(f"the C++ attention kernel did not build: {exc}") from exc
        return CppAttention(cpu_kernels)
    if name == "triton":
        import os

        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("triton attention needs CUDA (or TRITON_INTERPRET=1 on CPU)")
    from engines.own.kernels import load_backend

    try:
        return KernelAttention(load_backend(name))
    except ImportError as exc:
        raise ValueError(f"attention backend '{name}' is not importable: {exc}") from exc
