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
    q_ptr, out_ptr, part_acc_ptr, part_stats_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    scale, stride_qb, stride_qh, stride_ob, stride_oh, stride_bt,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per (sequence, KV head, split of the context): the GROUP query heads sharing that KV head
    are the rows. One split writes the output; several write unnormalised partials for `_combine_kernel`."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
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
    # This split's share of the key tiles: [key_begin, key_end); a split past the context gets none.
    split_keys = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), NUM_SPLITS) * BLOCK_N
    key_begin = split * split_keys
    key_end = tl.minimum(seq_len, key_begin + split_keys)
    for key_start in range(key_begin, key_end, BLOCK_N):
        acc, row_max, row_sum = _attend_tile(
            q, acc, row_max, row_sum, key_start, seq_len, query_pos, block_table_ptr, k_cache_ptr, v_cache_ptr,
            kv_head, scale, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, BLOCK_N, DOT_PRECISION,
        )  # fmt: skip
    if NUM_SPLITS == 1:
        out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]  # an empty context (padding row) gives zeros
        out_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_live[:, None])
    else:
        # partials laid out [batch, num_heads, NUM_SPLITS, ...]: acc [HEAD_DIM], stats (max, sum)
        part = (seq * (NUM_KV_HEADS * GROUP) + heads).to(tl.int64) * NUM_SPLITS + split
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_live[:, None])
        tl.store(part_stats_ptr + part * 2, row_max, mask=row_live)
        tl.store(part_stats_ptr + part * 2 + 1, row_sum, mask=row_live)


@triton.jit
def _combine_kernel(
    out_ptr, part_acc_ptr, part_stats_ptr, stride_ob, stride_oh,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """One program per (sequence, query head): merge the splits' online-softmax partials."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, BLOCK_S)
    live = splits < NUM_SPLITS
    part = (seq * NUM_HEADS + head).to(tl.int64) * NUM_SPLITS + splits
    split_max = tl.load(part_stats_ptr + part * 2, mask=live, other=float("-inf"))
    split_sum = tl.load(part_stats_ptr + part * 2 + 1, mask=live, other=0.0)
    dims = tl.arange(0, HEAD_DIM)
    split_acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], mask=live[:, None], other=0.0)
    top = tl.max(split_max, axis=0)
    top = tl.where(top == float("-inf"), 0.0, top)  # an empty context: every weight becomes 0
    weight = tl.exp(split_max - top)
    total = tl.sum(weight * split_sum, axis=0)
    out = tl.sum(weight[:, None] * split_acc, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


@triton.jit
def _prefill_kernel(
    q_ptr, out_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_q_ptr, context_lens_ptr, scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per (sequence, tile of BLOCK_M new tokens, KV head), causal over the whole cache. The
    GROUP query heads sharing the KV head ride as rows (token-major), so each K/V tile is read once per group.
    The grid's tile axis is an upper bound taken from shapes: tiles past a sequence's new tokens exit."""
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    if tile * BLOCK_M < q_len:
        seq_len = tl.load(context_lens_ptr + seq)
        rows = tl.arange(0, BLOCK_M * GROUP_P2)
        token = tile * BLOCK_M + rows // GROUP_P2
        head = kv_head * GROUP + rows % GROUP_P2
        row_live = (token < q_len) & (rows % GROUP_P2 < GROUP)
        query_pos = seq_len - q_len + token
        dims = tl.arange(0, HEAD_DIM)
        tokens = (q_start + token).to(tl.int64)
        q_ptrs = q_ptr + tokens[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :]
        q = tl.load(q_ptrs, mask=row_live[:, None], other=0.0)
        q = q.to(k_cache_ptr.dtype.element_ty)
        acc = tl.zeros([BLOCK_M * GROUP_P2, HEAD_DIM], dtype=tl.float32)
        row_max = tl.full([BLOCK_M * GROUP_P2], float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros([BLOCK_M * GROUP_P2], dtype=tl.float32)
        block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
        key_end = tl.minimum(seq_len, seq_len - q_len + (tile + 1) * BLOCK_M)  # causal: later keys are hidden
        for key_start in range(0, key_end, BLOCK_N):
            acc, row_max, row_sum = _attend_tile(
                q, acc, row_max, row_sum, key_start, seq_len, query_pos, block_table_ptr, k_cache_ptr,
                v_cache_ptr, kv_head, scale, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, BLOCK_N, DOT_PRECISION,
            )  # fmt: skip
        out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]  # dead rows (past q_len) stay finite
        out_ptrs = out_ptr + tokens[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
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
    num_splits: int | None = None,
) -> torch.Tensor:
    """One new query per sequence: `q` `[B, H, D]` attends to its `context_lens[b]` cached tokens.

    Each context is cut into `num_splits` key ranges run in parallel (split-K) and merged; None picks enough
    to fill the GPU. Launch shape depends only on tensor shapes (no host reads), so it can be captured in a
    CUDA graph.
    """
    _check_cache(k_cache, v_cache)
    q = _last_dim_contiguous(q)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if batch == 0:
        return out
    block_n = 64 if head_dim <= 64 else 32
    max_keys = block_tables.shape[1] * k_cache.shape[1]  # a shape, not a host read of the lengths
    splits = num_splits or default_num_splits(batch * num_kv_heads, triton.cdiv(max_keys, block_n), q.device)
    part_acc = torch.empty(batch, num_heads, splits, head_dim, dtype=torch.float32, device=q.device)
    part_stats = torch.empty(batch, num_heads, splits, 2, dtype=torch.float32, device=q.device)
    # tl.dot needs at least 16 rows; the unused rows are masked.
    block_g = max(16, triton.next_power_of_2(group))
    _decode_kernel[(batch, num_kv_heads, splits)](
        q, out, part_acc, part_stats, k_cache, v_cache, block_tables, context_lens, scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=group, BLOCK_G=block_g, BLOCK_SIZE=k_cache.shape[1], NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_N=block_n, NUM_SPLITS=splits, DOT_PRECISION=_dot_precision(k_cache),
    )  # fmt: skip
    if splits > 1:
        _combine_kernel[(batch, num_heads)](
            out, part_acc, part_stats, out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, NUM_SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits),
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
    group = num_heads // num_kv_heads
    group_p2 = triton.next_power_of_2(group)
    rows = 64 if head_dim <= 64 else 32  # query rows (token x grouped head) per program
    block_m = max(rows // group_p2, 1)  # rows >= 16, as tl.dot needs
    # tiles bounded by the packed token count (a shape): no device-to-host read of the longest sequence
    grid = (batch, triton.cdiv(q.shape[0], block_m), num_kv_heads)
    _prefill_kernel[grid](
        q, out, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=group, GROUP_P2=group_p2, BLOCK_SIZE=k_cache.shape[1], NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=rows, DOT_PRECISION=_dot_precision(k_cache),
    )  # fmt: skip
    return out


def default_num_splits(programs: int, key_tiles: int, device: torch.device) -> int:
    """Splits per context so that about two programs run per streaming multiprocessor (1 off CUDA, where
    the interpreter gains nothing), never more than the key tiles of the longest possible context."""
    if device.type != "cuda":
        return 1
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(key_tiles, triton.cdiv(target, programs), 64))
