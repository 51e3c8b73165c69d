"""Every technique toggle changes speed or memory, never the greedy tokens (fp32 SmolLM2)."""

from __future__ import annotations

import pytest

from engines import create_engine
from engines.own.kernels import cpu_kernels
from engines.base import Attention, Batching, KVCache, ModelSpec, Request, SamplingParams, Technique
from own_prompts import text_prompts

NEW_TOKENS = 16
LENGTHS = [3, 20, 47, 90, 150, 260]
BASE = Technique(kv_cache=KVCache.paged, batching=Batching.continuous, chunked_prefill=True, prefix_cache=False,
                 attention=Attention.sdpa)  # fmt: skip


def run(model_dir, prompts, technique=BASE, new_tokens=NEW_TOKENS, **options):
    options = {"kv_cache_bytes": 1 << 29, "max_num_batched_tokens": 64, **options}
    engine = create_engine("own", ModelSpec("smollm2", str(model_dir)), technique, options, "cpu")
    requests = [Request(f"r{i}", p, SamplingParams(max_tokens=new_tokens, ignore_eos=True)) for i, p in enumerate(prompts)]
    outputs = engine.generate(requests)
    assert all(o.finish_reason == "length" for o in outputs), [o.error for o in outputs]
    return [o.token_ids for o in outputs], engine.stats()


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    return text_prompts(smollm2_dir, LENGTHS)


@pytest.fixture(scope="module")
def baseline(smollm2_dir, prompts):
    tokens, stats = run(smollm2_dir, prompts)
    assert stats["prefill_tokens"] > 0 and stats["peak_running_seqs"] > 1  # really batched and chunked
    return tokens


@pytest.fixture(scope="module")
def shared_prefix_prompts(smollm2_dir):
    """Six prompts opening with the same 150 tokens (a system prompt), then their own text."""
    head, *tails = text_prompts(smollm2_dir, [150, 10, 37, 64, 5, 90, 1])
    return [head + tail for tail in tails]


def test_contiguous_kv_gives_the_same_tokens_as_paged(smollm2_dir, prompts, baseline):
    tokens, stats = run(smollm2_dir, prompts, BASE.__class__(**{**vars(BASE), "kv_cache": KVCache.contiguous}),
                        kv_cache_bytes=6 * 8192 * 46080)  # fmt: skip
    assert tokens == baseline
    assert stats["kv_waste_pct"] > 90  # each sequence reserved 8192 token slots


def test_no_kv_cache_recomputing_everything_gives_the_same_tokens(smollm2_dir, prompts, baseline):
    technique = Technique(kv_cache=KVCache.none, chunked_prefill=False, prefix_cache=False, attention=Attention.sdpa)
    tokens, stats = run(smollm2_dir, prompts, technique, new_tokens=6, max_num_batched_tokens=512)
    assert tokens == [t[:6] for t in baseline]
    assert stats["decode_tokens"] == 0  # every step was a full recompute


def test_static_batches_give_the_same_tokens_as_continuous(smollm2_dir, prompts, baseline):
    technique = Technique(**{**vars(BASE), "batching": Batching.static})
    tokens, _ = run(smollm2_dir, prompts, technique, batch_size=4)
    assert tokens == baseline


def test_one_request_at_a_time_gives_the_same_tokens(smollm2_dir, prompts, baseline):
    tokens, stats = run(smollm2_dir, prompts, max_num_seqs=1)
    assert tokens == baseline and stats["peak_running_seqs"] == 1


def test_unchunked_prefill_gives_the_same_tokens(smollm2_dir, prompts, baseline):
    tokens, _ = run(smollm2_dir, prompts, Technique(**{**vars(BASE), "chunked_prefill": False}))
    assert tokens == baseline


def test_torch_reference_attention_gives_the_same_tokens_as_sdpa(smollm2_dir, prompts, baseline):
    tokens, _ = run(smollm2_dir, prompts, Technique(**{**vars(BASE), "attention": Attention.torch}))
    assert tokens == baseline


def test_cpp_decode_kernel_gives_the_same_tokens_as_sdpa(smollm2_dir, prompts, baseline):
    tokens, _ = run(smollm2_dir, prompts, Technique(**{**vars(BASE), "attention": Attention.cpp}))
    assert tokens == baseline


def test_torch_layer_ops_give_the_same_tokens_as_our_cpp_ones(smollm2_dir, prompts, baseline):
    tokens, stats = run(smollm2_dir, prompts, cpp_layer_ops=False)
    assert stats["layer_ops"] == "torch (cpp_layer_ops=false)"
    assert tokens == baseline


@pytest.mark.skipif(cpu_kernels.missing_toolchain() is not None or not cpu_kernels.packed_linear_amx(),
                    reason="needs the C++ kernels on a CPU with AMX-BF16")  # fmt: skip
def test_fp32_linears_split_on_amx_tiles_give_the_same_tokens(smollm2_dir, prompts, baseline):
    tokens, stats = run(smollm2_dir, prompts, fp32_on_amx=True)
    assert stats["linear_instructions"].startswith("AMX-BF16 tiles, fp32 as three bf16 terms")
    assert tokens == baseline


def test_forced_preemption_with_a_tiny_kv_pool_gives_the_same_tokens(smollm2_dir, prompts, baseline):
    tokens, stats = run(smollm2_dir, prompts, kv_cache_bytes=24 * 16 * 46080)  # 24 blocks = 384 token slots
    assert stats["preemptions"] > 0
    assert tokens == baseline


def test_prefix_cache_hits_shared_prefixes_and_changes_no_token(smollm2_dir, shared_prefix_prompts):
    without, _ = run(smollm2_dir, shared_prefix_prompts)
    technique = Technique(**{**vars(BASE), "prefix_cache": True})
    with_cache, stats = run(smollm2_dir, shared_prefix_prompts, technique, max_num_seqs=2)
    assert with_cache == without
    assert stats["prefix_cache_hit_rate"] > 0.3 and stats["prefix_cache_hit_tokens"] >= 4 * 144


def test_prefix_cache_under_preemption_and_chunk_boundaries_changes_no_token(smollm2_dir, shared_prefix_prompts):
    without, _ = run(smollm2_dir, shared_prefix_prompts)
    technique = Technique(**{**vars(BASE), "prefix_cache": True})
    # 30 blocks: the shared prefix plus two tails fit, so sequences evict and re-hit each other's blocks;
    # a 40-token budget puts chunk ends inside blocks
    tokens, stats = run(smollm2_dir, shared_prefix_prompts, technique, kv_cache_bytes=30 * 16 * 46080,
                        max_num_batched_tokens=40)  # fmt: skip
    assert stats["preemptions"] > 0 and stats["prefix_cache_hit_tokens"] > 0
    assert tokens == without
