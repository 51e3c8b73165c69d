"""`engine.max_model_len` (vLLM's --max-model-len) bounds every sequence in both engines and sizes the KV that
is reserved per sequence; None means the model's context, and more than the context is an error."""

from __future__ import annotations

import pytest
import torch

from engines import create_engine
from engines.base import Attention, Graphs, KVCache, ModelSpec, Request, SamplingParams, Technique

CONTEXT = 128
TINY_LLAMA = {
    "model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": CONTEXT,
}  # fmt: skip
SPEC = ModelSpec("tiny", None, random_config=TINY_LLAMA, seed=0)
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 4  # K and V x layers x KV heads x head dim x float32


def engine(name: str, technique: Technique = Technique(), **options):
    kv_pool = {"kv_cache_bytes": 1 << 22} if name == "own" else {}
    return create_engine(name, SPEC, technique, {**kv_pool, **options}, "cpu")


def request(request_id: str, prompt_len: int, max_tokens: int) -> Request:
    return Request(request_id, [3] * prompt_len, SamplingParams(max_tokens=max_tokens, ignore_eos=True))


@pytest.mark.parametrize("name", ["own", "hf"])
def test_a_prompt_longer_than_max_model_len_is_rejected_and_generation_stops_there(name):
    tiny = engine(name, max_model_len=64)
    too_long, near_end = tiny.generate([request("too-long", 70, 4), request("near-end", 60, 20)])
    assert too_long.finish_reason == "error" and "max_model_len=64" in too_long.error
    assert near_end.finish_reason == "length" and near_end.prompt_len + len(near_end.token_ids) == 64
    assert tiny.stats()["max_model_len"] == 64


@pytest.mark.parametrize("name", ["own", "hf"])
def test_max_model_len_defaults_to_the_models_context(name):
    tiny = engine(name)
    output = tiny.generate([request("near-end", CONTEXT - 2, 5)])[0]
    assert len(output.token_ids) == 2 and tiny.stats()["max_model_len"] == CONTEXT


@pytest.mark.parametrize("name", ["own", "hf"])
def test_max_model_len_beyond_the_models_context_is_an_error(name):
    with pytest.raises(ValueError, match=f"max_model_len={CONTEXT + 1}.*{CONTEXT}"):
        engine(name, max_model_len=CONTEXT + 1)


def test_contiguous_kv_reserves_max_model_len_per_sequence():
    contiguous = Technique(kv_cache=KVCache.contiguous)
    full, short = engine("own", contiguous), engine("own", contiguous, max_model_len=32)
    assert (full.llm.kv.blocks_per_region, short.llm.kv.blocks_per_region) == (CONTEXT // 16, 32 // 16)
    # the same pool holds 4x as many sequences when each reserves a quarter of the positions
    assert short.max_concurrent_sequences([20], "contiguous") == 4 * full.max_concurrent_sequences([20], "contiguous")


def test_the_default_kv_budget_and_the_rope_tables_follow_max_model_len():
    tiny = engine("own", kv_cache_bytes=None, max_num_seqs=4, max_model_len=32)
    assert tiny.llm.kv.num_blocks * 16 == 4 * 32  # max_num_seqs full-length sequences
    assert tiny.model.rope_cos.shape[0] == 32  # CUDA-graph block tables are as wide as the rope table


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_block_tables_are_sized_from_max_model_len():
    technique = Technique(attention=Attention.triton, graphs=Graphs.cuda_graphs)
    options = dict(kv_cache_bytes=1 << 22, max_num_seqs=2, max_model_len=64)
    tiny = create_engine("own", SPEC, technique, options, "cuda")
    assert tiny.runner.decode_hook.block_tables.shape[1] == 64 // 16
    output = tiny.generate([request("near-end", 60, 20)])[0]
    assert output.prompt_len + len(output.token_ids) == 64
