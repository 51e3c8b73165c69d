"""Our C++ CPU kernels: the decode and prefill kernels (attention=cpp) equal the torch reference, reading only each
sequence's own slots; the layer ops equal the torch ops they replace: RoPE, SwiGLU and the residual add bit for bit, RMSNorm within a few
roundings (another summation order)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from test_kernels import TOLERANCE, paged_batch

from engines.own.kernels import cpu_kernels, reference
from engines.own.model import TorchLayerOps
from engines.own.rope import signed_sin

pytestmark = pytest.mark.skipif(cpu_kernels.missing_toolchain() is not None, reason="no C++ toolchain here")


@pytest.mark.parametrize(
    "heads, kv_heads, dim, block_size, lengths, dtype",
    [
        (9, 3, 64, 16, [1, 15, 16, 17, 200], torch.float32),  # SmolLM2's heads; lengths around block edges
        (9, 3, 64, 16, [1, 15, 16, 17, 200], torch.bfloat16),
        (8, 8, 128, 16, [5, 64, 100], torch.bfloat16),  # no GQA, head_dim 128
        (4, 2, 32, 8, [3, 33], torch.float32),  # a head size the kernel does not specialise
        (6, 2, 64, 32, [70, 1], torch.bfloat16),
        (10, 2, 64, 16, [33, 90], torch.float32),  # a group of 5: query heads in chunks of 4 and 1
        (12, 4, 128, 16, [48, 2], torch.bfloat16),  # head_dim 128, a group of 3: chunks of 2 and 1
    ],
)
def test_decode_matches_the_reference(heads, kv_heads, dim, block_size, lengths, dtype):
    batch = paged_batch(lengths, block_size, kv_heads, dim, dtype)  # slots no sequence owns hold NaN
    q = torch.randn(len(lengths), heads, dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    args = (batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens, dim**-0.5)
    out = cpu_kernels.paged_decode_attention(q, *args)
    expected = reference.paged_decode_attention(q, *args)
    assert out.dtype == dtype and out.shape == q.shape
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), expected.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def test_decode_reads_queries_from_a_strided_view():
    batch = paged_batch([40, 7], 16, 3, 64, torch.float32)
    packed = torch.randn(2, 15, 64)  # q heads, then k and v heads, as a fused projection leaves them
    q = packed[:, :9]
    args = (batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens, 0.125)
    torch.testing.assert_close(cpu_kernels.paged_decode_attention(q, *args),
                               reference.paged_decode_attention(q.contiguous(), *args))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_stores_the_new_rows_at_their_slots_before_attending(dtype):
    lengths, block_size = [17, 40], 16
    batch = paged_batch(lengths, block_size, 3, 64, dtype)
    slots = torch.tensor([int(batch.block_tables[b, (n - 1) // block_size]) * block_size + (n - 1) % block_size
                          for b, n in enumerate(lengths)])  # fmt: skip
    gen = torch.Generator().manual_seed(2)
    qk = torch.randn(2, 12, 64, generator=gen).to(dtype)  # q | k heads, as the model's RoPE leaves them
    q, k = qk[:, :9], qk[:, 9:]
    v = torch.randn(2, 5, 64, generator=gen).to(dtype)[:, 1:4]  # another token stride
    expected_k, expected_v = batch.k_cache.clone(), batch.v_cache.clone()
    expected_k.view(-1, 3, 64)[slots] = k
    expected_v.view(-1, 3, 64)[slots] = v
    args = (batch.block_tables, batch.context_lens, 0.125)
    expected = reference.paged_decode_attention(q, expected_k, expected_v, *args)
    out = cpu_kernels.paged_decode_attention(q, batch.k_cache, batch.v_cache, *args, k, v, slots)
    torch.testing.assert_close(batch.k_cache, expected_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(batch.v_cache, expected_v, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out.float(), expected.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def test_a_new_row_with_slot_minus_one_is_not_stored():
    batch = paged_batch([5], 16, 3, 64, torch.float32)
    before = batch.k_cache.clone()
    cpu_kernels.paged_decode_attention(torch.randn(1, 9, 64), batch.k_cache, batch.v_cache, batch.block_tables,
                                       batch.context_lens, 0.125, torch.randn(1, 3, 64), torch.randn(1, 3, 64),
                                       torch.tensor([-1]))  # fmt: skip
    torch.testing.assert_close(batch.k_cache, before, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    "heads, kv_heads, dim, block_size, lengths, q_lens, dtype",
    [
        (9, 3, 64, 16, [5, 150, 17, 70], [5, 130, 1, 70], torch.float32),  # tasks of 64 positions, chunks of 64 keys
        (9, 3, 64, 16, [5, 150, 17, 70], [5, 130, 1, 70], torch.bfloat16),
        (8, 2, 128, 8, [40, 4], [33, 4], torch.bfloat16),  # head_dim 128, a group of 4
        (4, 2, 32, 8, [45, 9], [40, 2], torch.float32),  # a head size the kernel does not specialise
        (3, 3, 64, 32, [64, 65, 129], [64, 1, 64], torch.float32),  # no GQA, contexts at chunk edges
    ],
)
def test_prefill_over_a_cached_context_matches_the_reference(heads, kv_heads, dim, block_size, lengths, q_lens,
                                                             dtype):  # fmt: skip
    batch = paged_batch(lengths, block_size, kv_heads, dim, dtype)  # slots no sequence owns hold NaN
    q = torch.randn(sum(q_lens), heads, dim, generator=torch.Generator().manual_seed(3)).to(dtype)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    args = (q, batch.k_cache, batch.v_cache, batch.block_tables, cu, batch.context_lens, dim**-0.5)
    out = cpu_kernels.paged_prefill_attention(*args)
    assert out.dtype == dtype and out.shape == q.shape and not out.isnan().any()
    torch.testing.assert_close(out.float(), reference.paged_prefill_attention(*args).float(),
                               atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])  # fmt: skip


def test_prefill_reads_queries_from_a_strided_view():
    batch = paged_batch([40, 7], 16, 3, 64, torch.float32)
    q = torch.randn(47, 15, 64)[:, :9]  # q heads of a fused q|k|v projection
    cu = torch.tensor([0, 40, 47], dtype=torch.int32)
    args = (batch.k_cache, batch.v_cache, batch.block_tables, cu, batch.context_lens, 0.125)
    torch.testing.assert_close(cpu_kernels.paged_prefill_attention(q, *args),
                               reference.paged_prefill_attention(q.contiguous(), *args))  # fmt: skip


def test_prefill_refuses_new_tokens_beyond_their_context():
    batch = paged_batch([20], 16, 3, 64, torch.float32)
    with pytest.raises(RuntimeError, match="must fit its context"):
        cpu_kernels.paged_prefill_attention(torch.randn(21, 9, 64), batch.k_cache, batch.v_cache, batch.block_tables,
                                            torch.tensor([0, 21], dtype=torch.int32), batch.context_lens, 0.125)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_gives_the_same_bits_on_two_threads_as_on_one(dtype):
    lengths, q_lens = [130, 17, 300, 64], [130, 1, 90, 64]
    batch = paged_batch(lengths, 16, 3, 64, dtype)
    gen = torch.Generator().manual_seed(5)
    q_prefill = torch.randn(sum(q_lens), 9, 64, generator=gen).to(dtype)
    q_decode = torch.randn(len(lengths), 9, 64, generator=gen).to(dtype)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    tables, lens = batch.block_tables, batch.context_lens

    def both():
        with torch.inference_mode():  # as the engine calls them
            return (cpu_kernels.paged_prefill_attention(q_prefill, batch.k_cache, batch.v_cache, tables, cu, lens, 0.125),
                    cpu_kernels.paged_decode_attention(q_decode, batch.k_cache, batch.v_cache, tables, lens, 0.125))  # fmt: skip

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = both()
        torch.set_num_threads(2)  # tasks split over threads (the prefill's from a shared queue)
        two = both()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_context_longer_than_its_block_table_is_refused():
    batch = paged_batch([20], 16, 3, 64, torch.float32)
    with pytest.raises(RuntimeError, match="longer than its block table"):
        cpu_kernels.paged_decode_attention(torch.randn(1, 9, 64), batch.k_cache, batch.v_cache,
                                         batch.block_tables, torch.tensor([1000], dtype=torch.int32), 0.125)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, width", [(1, 576), (37, 576), (5, 100)])  # a decode row, a prefill chunk, odd width
def test_residual_add_is_bit_exact_and_rms_norm_within_a_few_roundings_of_the_torch_ops(rows, width, dtype):
    gen = torch.Generator().manual_seed(rows)
    x, residual = (torch.randn(rows, width, generator=gen).mul(4).to(dtype) for _ in range(2))
    weight = torch.rand(width, generator=gen).add(0.5).to(dtype)
    ext = cpu_kernels.extension()
    for res in (residual, None):
        normed, summed = ext.add_rms_norm(x, res, weight, 1e-5)
        want_normed, want_summed = TorchLayerOps.add_rms_norm(x, res, weight, 1e-5)
        assert normed.dtype == dtype and summed.shape == x.shape
        torch.testing.assert_close(summed, want_summed, rtol=0, atol=0)
        # the mean of squares sums in another order than torch's (and torch scales in another order)
        torch.testing.assert_close(normed, want_normed, rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_equals_the_torch_ops_bit_for_bit_on_a_slice_of_fused_qkv_rows(dtype):
    gen = torch.Generator().manual_seed(0)
    tokens, heads, kv_heads, dim = 7, 9, 3, 64
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    qk = qkv[:, : (heads + kv_heads) * dim].view(tokens, heads + kv_heads, dim)  # strided, as the model has it
    angles = torch.rand(tokens, dim, generator=gen) * 100
    cos, sin = angles.cos().to(dtype), signed_sin(angles.sin()).to(dtype)
    out = cpu_kernels.extension().rope(qk, cos, sin)
    assert out.is_contiguous() and out.shape == qk.shape
    torch.testing.assert_close(out, TorchLayerOps.rope(qk, cos, sin), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, width", [(5, 96), (3, 1536), (2, 100), (1, 7)])  # SmolLM2's 1536; tails; all tail
def test_silu_mul_equals_the_torch_ops_bit_for_bit(rows, width, dtype):
    gate_up = torch.randn(rows, 2 * width, generator=torch.Generator().manual_seed(2)).mul(3).to(dtype)
    gate_up[0, :4] = torch.tensor([-95.0, -110.0, 30.0, 0.0])  # silu's denormal and underflowing outputs
    torch.testing.assert_close(cpu_kernels.extension().silu_mul(gate_up), TorchLayerOps.silu_mul(gate_up),
                               rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, vocab", [(1, 49152), (7, 49152), (33, 1001)])  # SmolLM2's head; an odd vocab
def test_lm_head_on_all_threads_equals_torch_linear_bit_for_bit(rows, vocab, dtype):
    gen = torch.Generator().manual_seed(4)
    hidden, weight = torch.randn(rows, 576, generator=gen).to(dtype), torch.randn(vocab, 576, generator=gen).to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two row chunks, each on its own thread
    try:
        with torch.inference_mode():  # as the engine calls it: worker threads must see the mode too
            out = cpu_kernels.extension().lm_head(hidden, weight)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out, TorchLayerOps.lm_head(hidden, weight), rtol=0, atol=0)


def test_argmax_rows_picks_what_torch_argmax_picks_ties_nan_and_infinities_included():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(9, 49152, generator=gen)
    logits[1, [7, 40_000]] = 50.0  # a tie: the first wins
    logits[2, [30, 9]] = float("nan")  # a NaN beats every number; the first NaN wins
    logits[3] = float("-inf")  # all -inf: index 0
    logits[4, 49151] = float("inf")
    logits[5, 0] = 60.0
    rows = logits[:, :1001]  # a strided view of rows with an odd width
    for x in (logits, rows, logits[6:7]):
        torch.testing.assert_close(cpu_kernels.extension().argmax_rows(x), TorchLayerOps.argmax_rows(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="float32 rows"):
        cpu_kernels.extension().argmax_rows(logits.bfloat16())


def test_the_layer_ops_refuse_what_they_cannot_read():
    ext = cpu_kernels.extension()
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ext.add_rms_norm(torch.ones(2, 8, dtype=torch.float16), None, torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match="width"):
        ext.add_rms_norm(torch.ones(2, 8), None, torch.ones(9), 1e-5)
    with pytest.raises(RuntimeError, match="heads contiguous"):
        ext.rope(torch.ones(3, 4, 8).transpose(0, 1), torch.ones(4, 8), torch.ones(4, 8))


def test_a_lock_left_by_a_killed_build_is_cleared_and_a_live_one_kept(tmp_path, monkeypatch):
    # torch waits forever on a build folder's lock file; a killed first build leaves one behind
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, live = tmp_path / "old_build" / "lock", tmp_path / "running_build" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - cpu_kernels.STALE_LOCK_S - 60
    os.utime(stale, (old, old))
    cpu_kernels._clear_stale_lock("old_build")
    cpu_kernels._clear_stale_lock("running_build")
    assert not stale.exists() and live.exists()
