"""Plain-torch paged attention: the correctness reference and the `torch` attention backend.

Cache layout per layer: `k_cache`, `v_cache` are `[num_blocks, block_size, num_kv_heads, head_dim]`;
token slot `s` lives at block `s // block_size`, offset `s % block_size`. Query head `h` reads KV head
`h // group` (group = num_heads // num_kv_heads), as Llama's repeat_kv does. Scores and softmax are
computed in float32; outputs come back in the query dtype.
"""

from __future__ import annotations

import torch


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write `k`, `v` `[T, KVH, D]` into the caches at `slot_mapping` `[T]`; slot -1 marks padding."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence as `[length, KVH, D]`, in order."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    blocks = block_table[:num_blocks].long()
    return cache[blocks].reshape(-1, *cache.shape[2:])[:length]


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One new query per sequence: `q` `[B, H, D]` attends to its `context_lens[b]` cached tokens."""
    batch, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    lens = context_lens.long()
    # Gather every sequence padded to the longest one, then mask the tail: one batched matmul.
    max_blocks = -(-int(lens.max()) // block_size) if batch else 0
    blocks = block_tables[:, :max_blocks].long().clamp_min(0)  # padding entries may be -1
    keys = k_cache[blocks].reshape(batch, -1, num_kv_heads, head_dim).float()
    values = v_cache[blocks].reshape(batch, -1, num_kv_heads, head_dim).float()
    query = q.float().view(batch, num_kv_heads, group, head_dim)
    scores = torch.einsum("bkgd,bnkd->bkgn", query, keys) * scale
    positions = torch.arange(keys.shape[1], device=q.device)
    valid = positions[None, :] < lens[:, None]  # [B, N]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    values = values.masked_fill(~valid[:, :, None, None], 0.0)  # unwritten cache slots may hold NaN
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an empty context (padding row) gives zeros
    out = torch.einsum("bkgn,bnkd->bkgd", probs, values)
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention for packed new tokens `q` `[T, H, D]` over each sequence's whole cache.

    Sequence `b` owns query rows `cu_seqlens_q[b]:cu_seqlens_q[b+1]`; its K/V (cached prefix plus the new
    tokens) are already stored, `context_lens[b]` tokens in all. New token `i` sits at position
    `context_lens[b] - q_len + i` and attends to positions up to its own.
    """
    num_heads = q.shape[1]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    lens = context_lens.tolist()
    for b, length in enumerate(lens):
        start, end = starts[b], starts[b + 1]
        q_len = end - start
        if q_len == 0:
            continue
        keys = gather_kv(k_cache, block_tables[b], length).float().repeat_interleave(group, dim=1)
        values = gather_kv(v_cache, block_tables[b], length).float().repeat_interleave(group, dim=1)
        query = q[start:end].float()
        scores = torch.einsum("qhd,khd->hqk", query, keys) * scale
        q_pos = torch.arange(length - q_len, length, device=q.device)
        k_pos = torch.arange(length, device=q.device)
        scores = scores.masked_fill(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, values).to(q.dtype)
    return out
