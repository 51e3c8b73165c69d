"""Triton paged-attention kernels, same signatures as `reference.py`.

Cache layout `[num_blocks, block_size, num_kv_heads, head_dim]`, contiguous. Kernels walk a sequence in
tiles of BLOCK_N token positions and look up each position's block, so the tile size is independent of the
cache block size (any power of two). Softmax is online (running max and sum) with float32 accumulators.
Runs on CUDA, or on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set before importing triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HEAD_DIM)[None, :]
    # slot -1 is a padding token: nothing to write. Broadcast first: the interpreter rejects scalar mask terms.
    slot_tile = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.int64) + slot
    mask = (slot_tile >= 0) & (heads < NUM_KV_HEADS)
    k = tl.load(k_ptr + token * stride_kt + heads * stride_kh + dims, mask=mask)
    v = tl.load(v_ptr + token * stride_vt + heads * stride_vh + dims, mask=mask)
    cache_offsets = slot * (NUM_KV_HEADS * HEAD_DIM) + heads * HEAD_DIM + dims
    tl.store(k_cache_ptr + cache_offsets, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_offsets, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attend_tile(
    q, acc, row_max, row_sum, key_start, seq_len, query_pos, block_table_ptr, k_cache_ptr, v_cache_ptr, kv_head,
    scale, BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Fold keys [key_start, key_start + BLOCK_N) into the online softmax of query rows `q` [M, D].

    `query_pos` [M] is each row's position: a key is visible when its position is <= the row's and < seq_len.
    """
    key_pos = key_start + tl.arange(0, BLOCK_N)
    in_seq = key_pos < seq_len
    block_ids = tl.load(block_table_ptr + key_pos // BLOCK_SIZE, mask=in_seq, other=0).to(tl.int64)
    token_offsets = (block_ids * BLOCK_SIZE + key_pos % BLOCK_SIZE) * (NUM_KV_HEADS * HEAD_DIM)
    offsets = token_offsets[:, None] + kv_head * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    k = tl.load(k_cache_ptr + offsets, mask=in_seq[:, None], other=0.0)
    v = tl.load(v_cache_ptr + offsets, mask=in_seq[:, None], other=0.0)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    visible = in_seq[None, :] & (key_pos[None, :] <= query_pos[:, None])
    scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
    # Every tile holds key 0 or a key before the row's position, so new_max is finite for live rows.
    correction = tl.exp(row_max - new_max)
    probs = tl.exp(scores - new_max[:, None])
    row_sum = row_sum * correction + tl.sum(probs, axis=1)
    acc = acc * correction[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, new_max, row_sum


@triton.jit
def _decode_kernel(
    q_ptr, out_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, scale,
    stride_qb, stride_qh, stride_ob, stride_oh, stride_bt,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per (sequence, KV head): the GROUP query heads sharing that KV head are the rows."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_len = tl.load(context_lens_ptr + seq)
    rows = tl.arange(0, BLOCK_G)
    row_live = rows < GROUP
    heads = kv_head * GROUP + rows
    dims = tl.arange(0, HEAD_DIM)
    q_ptrs = q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_ptrs, mask=row_live[:, None], other=0.0)
    q = q.to(k_cache_ptr.dtype.element_ty)
    query_pos = tl.zeros([BLOCK_G], dtype=tl.int32) + seq_len - 1  # the new token is the last position
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    row_max = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_G], dtype=tl.float32)
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for key_start in range(0, seq_len, BLOCK_N):
        acc, row_max, row_sum = _attend_tile(
            q, acc, row_max, row_sum, key_start, seq_len, query_pos, block_table_ptr, k_cache_ptr, v_cache_ptr,
            kv_head, scale, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, BLOCK_N, DOT_PRECISION,
        )  # fmt: skip
    out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]  # an empty context (padding row) gives zeros
    out_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_live[:, None])


@triton.jit
def _prefill_kernel(
    q_ptr, out_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_q_ptr, context_lens_ptr, scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per (sequence, tile of BLOCK_M new tokens, query head), causal over the whole cache."""
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    if tile * BLOCK_M < q_len:
        seq_len = tl.load(context_lens_ptr + seq)
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_live = rows < q_len
        query_pos = seq_len - q_len + rows
        dims = tl.arange(0, HEAD_DIM)
        tokens = (q_start + rows).to(tl.int64)
        q_ptrs = q_ptr + tokens[:, None] * stride_qt + head * stride_qh + dims[None, :]
        q = tl.load(q_ptrs, mask=row_live[:, None], other=0.0)
        q = q.to(k_cache_ptr.dtype.element_ty)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
        key_end = tl.minimum(seq_len, seq_len - q_len + (tile + 1) * BLOCK_M)  # causal: later keys are hidden
        for key_start in range(0, key_end, BLOCK_N):
            acc, row_max, row_sum = _attend_tile(
                q, acc, row_max, row_sum, key_start, seq_len, query_pos, block_table_ptr, k_cache_ptr,
                v_cache_ptr, head // GROUP, scale, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, BLOCK_N, DOT_PRECISION,
            )  # fmt: skip
        out = acc / row_sum[:, None]
        out_ptrs = out_ptr + tokens[:, None] * stride_ot + head * stride_oh + dims[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_live[:, None])


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous [num_blocks, block_size, num_kv_heads, head_dim]")
    block_size, head_dim = k_cache.shape[1], k_cache.shape[3]
    if block_size & (block_size - 1) or head_dim & (head_dim - 1) or head_dim < 16:
        raise ValueError(f"block_size and head_dim must be powers of two, head_dim >= 16: got {block_size}, {head_dim}")


def _dot_precision(k_cache: torch.Tensor) -> str:
    # float32 caches get exact fp32 products (the default would round operands to tf32); others ignore it.
    return "ieee" if k_cache.dtype == torch.float32 else "tf32"


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write `k`, `v` `[T, KVH, D]` into the caches at `slot_mapping` `[T]`; slot -1 marks padding."""
    _check_cache(k_cache, v_cache)
    k, v = _last_dim_contiguous(k), _last_dim_contiguous(v)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if k.shape[0] == 0:
        return
    _store_kv_kernel[(k.shape[0],)](
        k, v, k_cache, v_cache, slot_mapping.to(torch.int64), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_H=triton.next_power_of_2(num_kv_heads),
    )  # fmt: skip


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One new query per sequence: `q` `[B, H, D]` attends to its `context_lens[b]` cached tokens.

    Launch shape depends only on tensor shapes (no host reads), so it can be captured in a CUDA graph.
    """
    _check_cache(k_cache, v_cache)
    q = _last_dim_contiguous(q)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if batch == 0:
        return out
    # tl.dot needs at least 16 rows; the unused rows are masked.
    block_g = max(16, triton.next_power_of_2(group))
    _decode_kernel[(batch, num_kv_heads)](
        q, out, k_cache, v_cache, block_tables, context_lens, scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=group, BLOCK_G=block_g, BLOCK_SIZE=k_cache.shape[1], NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_N=64 if head_dim <= 64 else 32, DOT_PRECISION=_dot_precision(k_cache),
    )  # fmt: skip
    return out


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

    Sequence `b` owns query rows `cu_seqlens_q[b]:cu_seqlens_q[b+1]`; its K/V are already stored,
    `context_lens[b]` tokens in all; new token `i` sits at position `context_lens[b] - q_len + i`.
    """
    _check_cache(k_cache, v_cache)
    q = _last_dim_contiguous(q)
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    out = torch.empty_like(q)
    batch = context_lens.shape[0]
    if q.shape[0] == 0 or batch == 0:
        return out
    max_q_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())  # host read: sizes the launch grid
    block_m = 64 if head_dim <= 64 else 32
    grid = (batch, triton.cdiv(max_q_len, block_m), num_heads)
    _prefill_kernel[grid](
        q, out, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=k_cache.shape[1], NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_m, DOT_PRECISION=_dot_precision(k_cache),
    )  # fmt: skip
    return out
