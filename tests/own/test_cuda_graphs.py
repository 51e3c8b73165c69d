"""CUDA-graph decode: replaying the captured graph gives what the eager decode forward gives."""

from __future__ import annotations

import pytest
import torch

from engines import create_engine
from engines.base import (
    Attention, Graphs, ModelSpec, Request, SamplingParams, Technique, UnsupportedTechnique,
)  # fmt: skip
from engines.own.attention import KernelAttention, SdpaAttention
from engines.own.attn_metadata import build_metadata
from engines.own.cuda_graphs import DecodeGraphRunner, capture_sizes
from engines.own.kv_pool import allocate_kv_caches
from engines.own.loader import load_model

BLOCK = 16
TINY = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
}  # fmt: skip
SPEC = ModelSpec("tiny", None, dtype="float32", random_config=TINY, seed=3)
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_capture_sizes_are_powers_of_two_then_max_num_seqs():
    assert capture_sizes(1) == [1]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_backends_that_read_sizes_on_the_host_are_refused():
    model, _ = load_model(SPEC, torch.device("cpu"))
    model.bind(SdpaAttention(), [], BLOCK)
    with pytest.raises(UnsupportedTechnique, match="attention=triton"):
        DecodeGraphRunner(model, BLOCK, torch.device("cpu"), 4)


@pytest.fixture(scope="module")
def cuda_model():
    from engines.own.kernels import triton_attention

    device = torch.device("cuda")
    model, _ = load_model(SPEC, device)
    caches = allocate_kv_caches(model.config, 128, BLOCK, torch.float32, device)
    model.bind(KernelAttention(triton_attention), caches, BLOCK)
    return model


def prefilled_batch(model, batch: int, seed: int):
    """`batch` sequences of ragged lengths prefilled eagerly over shuffled blocks; returns the decode-step
    inputs (next token of each) as the model runner builds them."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [3 + 7 * i for i in range(batch)]
    free = torch.randperm(128, generator=gen).tolist()
    tables = [[free.pop() for _ in range(n // BLOCK + 1)] for n in lengths]  # room for the decode token
    slot = lambda b, p: tables[b][p // BLOCK] * BLOCK + p % BLOCK  # noqa: E731
    device = torch.device("cuda")
    ids = torch.randint(0, TINY["vocab_size"], (sum(lengths),), generator=gen).to(device)
    positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
    slots = [slot(b, p) for b, n in enumerate(lengths) for p in range(n)]
    meta = build_metadata(slots, [], [], tables, lengths, lengths, device)
    with torch.inference_mode():
        model.forward(ids, positions, meta)
    next_ids = torch.randint(0, TINY["vocab_size"], (batch,), generator=gen).to(device)
    next_positions = torch.tensor(lengths, device=device)
    decode_slots = [slot(b, n) for b, n in enumerate(lengths)]
    decode_meta = build_metadata(decode_slots, tables, [n + 1 for n in lengths], [], [], [], device)
    return next_ids, next_positions, decode_meta


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_graph_replay_equals_eager_decode(cuda_model, batch):
    runner = DecodeGraphRunner(cuda_model, BLOCK, torch.device("cuda"), max_num_seqs=8)
    ids, positions, meta = prefilled_batch(cuda_model, batch, seed=batch)
    with torch.inference_mode():
        eager = cuda_model.forward(ids, positions, meta).clone()  # writes the new tokens' K/V ...
        replayed = runner(ids, positions, meta).clone()  # ... and the graph rewrites the same values
    assert replayed.shape == eager.shape
    torch.testing.assert_close(replayed, eager, atol=1e-4, rtol=1e-4)
    assert runner(*prefilled_batch(cuda_model, 9, seed=0)) is None  # beyond the largest bucket: run eagerly


@pytest.mark.gpu
@gpu_only
def test_engine_gives_the_same_greedy_tokens_with_and_without_cuda_graphs():
    requests = [
        Request(f"r{i}", [int(t) for t in torch.randint(0, 512, (5 + 9 * i,))], SamplingParams(16, ignore_eos=True))
        for i in range(5)
    ]
    outputs = {}
    for graphs in (Graphs.eager, Graphs.cuda_graphs):
        technique = Technique(attention=Attention.triton, graphs=graphs)
        engine = create_engine("own", SPEC, technique, dict(max_num_seqs=8, kv_cache_bytes=1 << 24), "cuda")
        outputs[graphs] = [out.token_ids for out in engine.generate(requests)]
        engine.close()
    assert outputs[Graphs.cuda_graphs] == outputs[Graphs.eager]
