"""Memory as a GPU needs it, checked on CPU: weights born in the target dtype, the KV budget by vLLM's rule
from a profiled step, one pool tensor for every layer's KV."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engines.base import ModelSpec
from engines.own.attention import make_attention
from engines.own.kv_pool import allocate_kv_caches, gpu_kv_budget, profile_step_memory, zero_blocks
from engines.own.loader import load_model

TINY = {
    "model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 96,
    "eos_token_id": 2, "bos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip


class Allocations(TorchDispatchMode):
    """Dtype and shape of every tensor an `empty*` op creates (how `to_empty` allocates on the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.startswith("empty") and isinstance(out, torch.Tensor):
            self.made.append((out.dtype, tuple(out.shape)))
        return out


def test_the_loader_allocates_bfloat16_weights_on_the_device_never_a_float32_copy(monkeypatch):
    # The device copy is made by `to_empty` (the host-side state may be float32: safetensors, seeded randn).
    seen = Allocations()
    original = torch.nn.Module.to_empty

    def watched_to_empty(module, *args, **kwargs):
        with seen:
            return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to_empty", watched_to_empty)
    spec = ModelSpec("tiny", None, dtype="bfloat16", random_config=dict(TINY), seed=0)
    model, _ = load_model(spec, torch.device("cpu"))
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    made_weights = [(dtype, shape) for dtype, shape in seen.made if shape in weight_shapes]
    assert len(made_weights) == len(list(model.parameters()))
    assert {dtype for dtype, _ in made_weights} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope_cos.dtype == torch.float32  # tables stay float32 and are cast per pass, like HF


def test_gpu_kv_budget_follows_vllms_rule():
    gib = 2**30
    assert gpu_kv_budget(80 * gib, 0.9, 16 * gib, 2 * gib, gib) == int(0.9 * 80 * gib) - 19 * gib
    assert gpu_kv_budget(24 * gib, 0.5, 16 * gib, 2 * gib, 0) == 0  # weights alone exceed the share


def test_profile_step_runs_the_largest_step_and_leaves_the_model_unbound():
    spec = ModelSpec("tiny", None, random_config=dict(TINY), seed=0)
    model, _ = load_model(spec, torch.device("cpu"))
    attention = make_attention("sdpa", torch.device("cpu"))
    # 200 tokens at max_model_len 96: sequences of 96, 96 and 8 tokens, 16-token blocks: 6 + 6 + 1
    pool = profile_step_memory(model, 200, 96, 4, 16, attention)
    per_token = 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 KV heads, head_dim 16, float32
    assert pool == 13 * 16 * per_token
    assert model.kv_caches == []


def test_kv_caches_are_views_of_one_pool_and_zeroing_touches_only_the_given_blocks():
    from engines.own.architecture import model_config_from_hf

    config = model_config_from_hf(TINY)
    caches = allocate_kv_caches(config, 5, 4, torch.float32, torch.device("cpu"))
    for k_cache, v_cache in caches:
        assert k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.shape == (5, 4, 2, 16)
        k_cache.fill_(1.0)
        v_cache.fill_(2.0)
    zero_blocks(caches, torch.tensor([1, 3]))
    for k_cache, v_cache in caches:
        for cache, fill in ((k_cache, 1.0), (v_cache, 2.0)):
            assert cache[[1, 3]].eq(0).all() and cache[[0, 2, 4]].eq(fill).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_kv_takes_the_share_weights_and_the_step_peak_leave_and_the_run_stays_inside_it():
    from engines import create_engine
    from engines.base import Request, SamplingParams, Technique

    spec = ModelSpec("tiny", None, dtype="bfloat16", random_config=dict(TINY), seed=0)
    engine = create_engine("own", spec, Technique(), dict(gpu_memory_utilization=0.05), "cuda")
    plan = engine.memory_plan
    share = 0.05 * plan["total_bytes"]
    kv = engine.llm.kv.num_blocks * 16 * engine.kv_bytes_per_token
    left = share - plan["weights_bytes"] - plan["activation_peak_bytes"] - plan["non_torch_bytes"]
    assert plan["weights_bytes"] > 0 and plan["activation_peak_bytes"] > 0
    assert left - 16 * engine.kv_bytes_per_token < kv <= left  # whole blocks of what is left
    torch.cuda.reset_peak_memory_stats()
    out = engine.generate([Request("r", [5] * 40, SamplingParams(max_tokens=8, ignore_eos=True))])[0]
    assert len(out.token_ids) == 8
    assert torch.cuda.max_memory_allocated() <= share - plan["non_torch_bytes"]
    engine.close()
