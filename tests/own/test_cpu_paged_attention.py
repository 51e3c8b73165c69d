"""Our C++ decode kernel (attention=cpp) equals the torch reference, reading only each sequence's own slots."""

from __future__ import annotations

import pytest
import torch
from test_kernels import TOLERANCE, paged_batch

from engines.own.kernels import cpu_paged, reference

pytestmark = pytest.mark.skipif(cpu_paged.missing_toolchain() is not None, reason="no C++ toolchain here")


@pytest.mark.parametrize(
    "heads, kv_heads, dim, block_size, lengths, dtype",
    [
        (9, 3, 64, 16, [1, 15, 16, 17, 200], torch.float32),  # SmolLM2's heads; lengths around block edges
        (9, 3, 64, 16, [1, 15, 16, 17, 200], torch.bfloat16),
        (8, 8, 128, 16, [5, 64, 100], torch.bfloat16),  # no GQA, head_dim 128
        (4, 2, 32, 8, [3, 33], torch.float32),  # a head size the kernel does not specialise
        (6, 2, 64, 32, [70, 1], torch.bfloat16),
    ],
)
def test_decode_matches_the_reference(heads, kv_heads, dim, block_size, lengths, dtype):
    batch = paged_batch(lengths, block_size, kv_heads, dim, dtype)  # slots no sequence owns hold NaN
    q = torch.randn(len(lengths), heads, dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    args = (batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens, dim**-0.5)
    out = cpu_paged.paged_decode_attention(q, *args)
    expected = reference.paged_decode_attention(q, *args)
    assert out.dtype == dtype and out.shape == q.shape
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), expected.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def test_decode_reads_queries_from_a_strided_view():
    batch = paged_batch([40, 7], 16, 3, 64, torch.float32)
    packed = torch.randn(2, 15, 64)  # q heads, then k and v heads, as a fused projection leaves them
    q = packed[:, :9]
    args = (batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens, 0.125)
    torch.testing.assert_close(cpu_paged.paged_decode_attention(q, *args),
                               reference.paged_decode_attention(q.contiguous(), *args))  # fmt: skip


def test_a_context_longer_than_its_block_table_is_refused():
    batch = paged_batch([20], 16, 3, 64, torch.float32)
    with pytest.raises(RuntimeError, match="longer than its block table"):
        cpu_paged.paged_decode_attention(torch.randn(1, 9, 64), batch.k_cache, batch.v_cache,
                                         batch.block_tables, torch.tensor([1000], dtype=torch.int32), 0.125)  # fmt: skip
