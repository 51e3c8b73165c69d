"""Paged-attention kernels: the torch reference equals dense causal attention, and the Triton kernels equal
the reference. Triton runs on CUDA when there is one; on CPU it needs the interpreter, switched on before the
kernels are defined, so this module re-runs its Triton class in a child pytest with TRITON_INTERPRET=1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import (
    INTERPRETED,
    ON_GPU,
    assert_class_passes_under_the_interpreter,
)

from engines.own.kernels import reference

DEVICE = "cuda" if ON_GPU else "cpu"
# The Triton 3.9 interpreter computes bf16 tl.dot on raw bits (fp16 is right), so bf16 cases need a GPU.
HALF = torch.float16 if INTERPRETED else torch.bfloat16
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@dataclass(slots=True)
class PagedBatch:
    k_cache: torch.Tensor  # [num_blocks, block_size, KVH, D]; slots no sequence owns hold NaN
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [B, W] int32, shuffled block ids, padded with -1
    context_lens: torch.Tensor  # [B] int32
    keys: list[torch.Tensor]  # per sequence [L, KVH, D], what the cache holds in order
    values: list[torch.Tensor]


def paged_batch(lengths, block_size, num_kv_heads, head_dim, dtype, seed=0) -> PagedBatch:
    gen = torch.Generator().manual_seed(seed)
    owned = [math.ceil(n / block_size) for n in lengths]
    num_blocks = sum(owned) + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    # Slots no sequence wrote hold NaN, as an unwritten torch.empty cache may: kernels must never let them in.
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(lengths), max(owned, default=0) + 1), -1, dtype=torch.int32)
    keys, values = [], []
    for b, n in enumerate(lengths):
        blocks = [free.pop() for _ in range(owned[b])]
        tables[b, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        keys.append(torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype))
        values.append(torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype))
        for i in range(n):
            k_cache[blocks[i // block_size], i % block_size] = keys[b][i]
            v_cache[blocks[i // block_size], i % block_size] = values[b][i]
    lens = torch.tensor(lengths, dtype=torch.int32)
    to = lambda t: t.to(DEVICE)  # noqa: E731
    return PagedBatch(to(k_cache), to(v_cache), to(tables), to(lens), list(map(to, keys)), list(map(to, values)))


def dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of queries `[L, H, D]` at positions 0..L-1 over `[L, KVH, D]`, float32, by SDPA."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(group, dim=1).transpose(0, 1) for t in (k, v))
    out = F.scaled_dot_product_attention(q.float().transpose(0, 1), k, v, is_causal=True, scale=scale)
    return out.transpose(0, 1)


def random_queries(lengths, num_heads, head_dim, dtype, seed=1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, num_heads, head_dim, generator=gen).to(dtype).to(DEVICE) for n in lengths]


def test_reference_decode_equals_last_row_of_dense_causal_attention():
    lengths, heads, kv_heads, dim = [1, 7, 16, 33], 6, 2, 16
    batch = paged_batch(lengths, 4, kv_heads, dim, torch.float32)
    queries = random_queries(lengths, heads, dim, torch.float32)
    out = reference.paged_decode_attention(
        torch.stack([q[-1] for q in queries]), batch.k_cache, batch.v_cache, batch.block_tables,
        batch.context_lens, 0.3,
    )  # fmt: skip
    for b in range(len(lengths)):
        expected = dense_causal(queries[b], batch.keys[b], batch.values[b], 0.3)[-1]
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)


def test_reference_prefill_over_cached_prefix_equals_dense_causal_rows():
    lengths, q_lens, heads, kv_heads, dim = [9, 20, 3], [9, 6, 1], 4, 1, 16
    batch = paged_batch(lengths, 8, kv_heads, dim, torch.float32)
    queries = random_queries(lengths, heads, dim, torch.float32)
    new = torch.cat([q[-n:] for q, n in zip(queries, q_lens)])
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    out = reference.paged_prefill_attention(
        new, batch.k_cache, batch.v_cache, batch.block_tables, cu, batch.context_lens, 0.25
    )
    for b, n in enumerate(q_lens):
        expected = dense_causal(queries[b], batch.keys[b], batch.values[b], 0.25)[-n:]
        torch.testing.assert_close(out[cu[b] : cu[b + 1]], expected, atol=1e-5, rtol=1e-5)


def test_reference_decode_of_an_empty_context_is_zero():
    batch = paged_batch([5, 0], 4, 2, 16, torch.float32)
    out = reference.paged_decode_attention(
        torch.randn(2, 2, 16, device=DEVICE), batch.k_cache, batch.v_cache, batch.block_tables,
        batch.context_lens, 1.0,
    )  # fmt: skip
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_reference_store_kv_writes_each_slot_and_skips_padding():
    k_cache = torch.zeros(3, 4, 2, 16, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    k, v = torch.randn(3, 2, 16, device=DEVICE), torch.randn(3, 2, 16, device=DEVICE)
    reference.store_kv(k, v, k_cache, v_cache, torch.tensor([9, -1, 2], device=DEVICE))
    assert torch.equal(k_cache[2, 1], k[0]) and torch.equal(v_cache[2, 1], v[0])  # slot 9 = block 2, offset 1
    assert torch.equal(k_cache[0, 2], k[2]) and torch.equal(v_cache[0, 2], v[2])
    assert int((k_cache != 0).any(-1).any(-1).sum()) == 2  # the padding row went nowhere


def test_triton_kernels_match_reference_under_the_interpreter():
    assert_class_passes_under_the_interpreter(__file__, "TestTritonMatchesReference")


@pytest.mark.skipif(not (ON_GPU or INTERPRETED), reason="on CPU this class runs in the interpreter child process")
class TestTritonMatchesReference:
    @pytest.fixture(scope="class")
    def triton_kernels(self):
        from engines.own.kernels import triton_attention

        return triton_attention

    @pytest.mark.parametrize("dtype", [torch.float32, HALF])
    def test_store_kv_writes_the_same_cache_as_reference(self, triton_kernels, dtype):
        expected = paged_batch([6], 4, 3, 64, dtype)
        actual = paged_batch([6], 4, 3, 64, dtype)
        k, v = (torch.randn(5, 3, 64, device=DEVICE).to(dtype) for _ in range(2))
        slots = torch.tensor([7, -1, 0, 12, -1], device=DEVICE)
        reference.store_kv(k, v, expected.k_cache, expected.v_cache, slots)
        triton_kernels.store_kv(k, v, actual.k_cache, actual.v_cache, slots)
        torch.testing.assert_close(actual.k_cache, expected.k_cache, atol=0, rtol=0, equal_nan=True)
        torch.testing.assert_close(actual.v_cache, expected.v_cache, atol=0, rtol=0, equal_nan=True)

    @pytest.mark.parametrize(
        "heads,kv_heads,dim,block_size,lengths,dtype",
        [
            (4, 4, 64, 16, [1, 17, 80], torch.float32),  # group 1; 80 spans two 64-key tiles
            (9, 3, 64, 4, [5, 33, 130, 0], torch.float32),  # group 3 (SmolLM2); an empty padding row
            (8, 2, 128, 32, [40, 7], torch.float32),  # group 4, head_dim 128, block larger than a tile
            (8, 2, 64, 16, [100, 3], HALF),
            (4, 1, 128, 8, [21], torch.float16),
        ],
    )
    def test_decode_matches_reference(self, triton_kernels, heads, kv_heads, dim, block_size, lengths, dtype):
        batch = paged_batch(lengths, block_size, kv_heads, dim, dtype)
        q = torch.randn(len(lengths), heads, dim, device=DEVICE).to(dtype)
        args = (q, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens, dim**-0.5)
        expected = reference.paged_decode_attention(*args)
        actual = triton_kernels.paged_decode_attention(*args)
        assert actual.dtype == dtype
        torch.testing.assert_close(actual, expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])

    @pytest.mark.parametrize(
        "heads,kv_heads,dim,block_size,lengths,q_lens,dtype",
        [
            (9, 3, 64, 16, [5, 90, 17], [5, 70, 1], torch.float32),  # 70 new tokens span two query tiles
            (8, 2, 128, 8, [40, 4], [33, 4], torch.float32),
            (4, 4, 64, 32, [50, 12], [20, 3], HALF),
        ],
    )
    def test_prefill_over_cached_prefix_matches_reference(
        self, triton_kernels, heads, kv_heads, dim, block_size, lengths, q_lens, dtype
    ):
        batch = paged_batch(lengths, block_size, kv_heads, dim, dtype)
        q = torch.randn(sum(q_lens), heads, dim, device=DEVICE).to(dtype)
        cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
        args = (q, batch.k_cache, batch.v_cache, batch.block_tables, cu, batch.context_lens, dim**-0.5)
        expected = reference.paged_prefill_attention(*args)
        actual = triton_kernels.paged_prefill_attention(*args)
        torch.testing.assert_close(actual, expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])

    def test_decode_reads_queries_from_a_strided_view(self, triton_kernels):
        batch = paged_batch([19, 4], 4, 2, 64, torch.float32)
        packed = torch.randn(2, 4 + 2 + 2, 64, device=DEVICE)  # q|k|v heads side by side, as a fused qkv split
        q = packed[:, :4]
        args = (q, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens, 0.125)
        expected = reference.paged_decode_attention(q.contiguous(), *args[1:])
        torch.testing.assert_close(triton_kernels.paged_decode_attention(*args), expected, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("splits", [2, 3, 8])
    def test_split_k_decode_matches_reference(self, triton_kernels, splits):
        # lengths: empty, shorter than one tile per split, several tiles; group 3 (SmolLM2) and group 4
        for heads, kv_heads, lengths in ((9, 3, [0, 5, 130, 300]), (8, 2, [1, 64, 65])):
            batch = paged_batch(lengths, 16, kv_heads, 64, torch.float32)
            q = torch.randn(len(lengths), heads, 64, device=DEVICE)
            args = (q, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens, 0.125)
            expected = reference.paged_decode_attention(*args)
            actual = triton_kernels.paged_decode_attention(*args, num_splits=splits)
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)

    def test_prefill_reads_no_value_back_to_the_host(self, triton_kernels):
        from torch.utils._python_dispatch import TorchDispatchMode

        class HostReads(TorchDispatchMode):
            count = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default:  # int(t), t.item(), t.tolist()
                    HostReads.count += 1
                return func(*args, **(kwargs or {}))

        batch = paged_batch([30, 9], 16, 3, 64, torch.float32)
        q = torch.randn(30 + 4, 9, 64, device=DEVICE)
        cu = torch.tensor([0, 30, 34], dtype=torch.int32, device=DEVICE)
        args = (q, batch.k_cache, batch.v_cache, batch.block_tables, cu, batch.context_lens, 0.125)
        expected = reference.paged_prefill_attention(*args)
        with HostReads():
            actual = triton_kernels.paged_prefill_attention(*args)
        assert HostReads.count == 0
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
