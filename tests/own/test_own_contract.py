"""OwnEngine's contract on tiny random models: technique resolution, device checks, bad input, stopping,
seeded sampling, stats, and the model families (Llama 3 rope scaling, Qwen2 biases, Qwen3 q/k norms)."""

from __future__ import annotations

import time

import pytest
import torch

from engines import create_engine
from engines.base import (
    Attention,
    Graphs,
    KVCache,
    ModelSpec,
    Request,
    SamplingParams,
    Technique,
    UnsupportedTechnique,
)
from engines.own.engine import OwnEngine
from engines.own.kernels import cpu_kernels
from engines.own.quant.linear import onednn_packing_available

TINY = {
    "model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 96,
    "eos_token_id": 2, "bos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip
FAMILIES = {
    "llama3_rope": {**TINY, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
    "qwen2": {**TINY, "model_type": "qwen2", "tie_word_embeddings": True},
    "qwen3": {**TINY, "model_type": "qwen3", "head_dim": 32},
    "mistral": {**TINY, "model_type": "mistral", "sliding_window": None},
}  # fmt: skip


def tiny_engine(technique=Technique(), config=TINY, **options) -> OwnEngine:
    spec = ModelSpec("tiny", None, random_config=dict(config), seed=0)
    return create_engine("own", spec, technique, dict(kv_cache_bytes=1 << 22, **options), "cpu")


def greedy(engine, prompts, max_tokens=8, **sampling):
    params = SamplingParams(max_tokens=max_tokens, **{"ignore_eos": True, **sampling})
    return engine.generate([Request(str(i), p, params) for i, p in enumerate(prompts)])


def test_defaults_are_the_best_set_and_follow_the_kv_mode():
    best = OwnEngine.resolve_technique(Technique())
    cpu_attention = Attention.cpp if cpu_kernels.builds() else Attention.sdpa
    assert (best.kv_cache, best.prefix_cache, best.chunked_prefill, best.attention) == (
        KVCache.paged, True, True, cpu_attention)  # fmt: skip
    contiguous = OwnEngine.resolve_technique(Technique(kv_cache=KVCache.contiguous))
    assert contiguous.prefix_cache is False
    none = OwnEngine.resolve_technique(Technique(kv_cache=KVCache.none))
    assert (none.prefix_cache, none.chunked_prefill) == (False, False)


def test_cpu_defaults_fall_back_to_sdpa_and_torch_layer_ops_where_the_cpp_kernels_do_not_build(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "builds", lambda: False)
    assert OwnEngine.resolve_technique(Technique()).attention == Attention.sdpa
    spec = ModelSpec("tiny", None, random_config=dict(TINY), seed=0)
    engine = create_engine("own", spec, Technique(), dict(kv_cache_bytes=1 << 22), "cpu")
    assert engine.stats()["layer_ops"] == "torch (the C++ kernels do not build here)"
    monkeypatch.setattr(cpu_kernels, "builds", lambda: True)
    assert OwnEngine.resolve_technique(Technique()).attention == Attention.cpp


def test_cuda_defaults_are_triton_with_cuda_graphs_and_an_explicit_choice_still_wins():
    cuda = OwnEngine.resolve_technique(Technique(), "cuda:0")
    assert (cuda.attention, cuda.graphs, cuda.kv_cache) == (Attention.triton, Graphs.cuda_graphs, KVCache.paged)
    assert OwnEngine.resolve_technique(Technique(), "cpu").graphs == Graphs.eager
    chosen = OwnEngine.resolve_technique(Technique(attention=Attention.sdpa, graphs=Graphs.eager), "cuda")
    assert (chosen.attention, chosen.graphs) == (Attention.sdpa, Graphs.eager)


@pytest.mark.parametrize("technique", [Technique(attention=Attention.flash_attn), Technique(graphs=Graphs.compile)])
def test_removed_paths_are_refused_by_name(technique):
    # flash_attn copied every context each layer; compile recompiled as shapes changed: neither is offered
    with pytest.raises(UnsupportedTechnique, match="does not support"):
        OwnEngine.resolve_technique(technique, "cuda")


def test_asking_for_a_combination_that_cannot_apply_is_unsupported():
    with pytest.raises(UnsupportedTechnique, match="prefix_cache needs kv_cache=paged"):
        OwnEngine.resolve_technique(Technique(kv_cache=KVCache.contiguous, prefix_cache=True))
    with pytest.raises(UnsupportedTechnique, match="chunked_prefill"):
        OwnEngine.resolve_technique(Technique(kv_cache=KVCache.none, chunked_prefill=True))


@pytest.mark.parametrize(
    "technique, reason",
    [
        (Technique(graphs=Graphs.cuda_graphs), "cuda_graphs needs a CUDA device"),
    ],
)
def test_gpu_only_techniques_are_unsupported_on_cpu(technique, reason):
    with pytest.raises(UnsupportedTechnique, match=reason):
        tiny_engine(technique)


def test_fp32_on_amx_is_refused_where_it_cannot_run():
    with pytest.raises(UnsupportedTechnique, match="fp32_on_amx=true cannot run here: it needs pack_weights=true"):
        tiny_engine(fp32_on_amx=True, pack_weights=False)
    bf16 = ModelSpec("tiny", None, dtype="bfloat16", random_config=dict(TINY), seed=0)
    with pytest.raises(UnsupportedTechnique, match="it is for float32 weights, these are bfloat16"):
        create_engine("own", bf16, Technique(), dict(kv_cache_bytes=1 << 22, fp32_on_amx=True), "cpu")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(UnsupportedTechnique, match="TRITON_INTERPRET"):
        tiny_engine(Technique(attention=Attention.triton))


def test_bad_requests_get_an_error_and_the_others_are_served():
    engine = tiny_engine()
    good = Request("good", [5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True))
    bad = {
        "empty": Request("empty", [], SamplingParams()),
        "too long": Request("too long", [5] * 96, SamplingParams()),
        "max_tokens 0": Request("max_tokens 0", [5], SamplingParams(max_tokens=0)),
        "beyond vocab": Request("beyond vocab", [5, 300], SamplingParams()),
        "negative id": Request("negative id", [-1, 5], SamplingParams()),
        "not an int": Request("not an int", [5, "a"], SamplingParams()),
        "temperature": Request("temperature", [5], SamplingParams(temperature=-1.0)),
        "top_p": Request("top_p", [5], SamplingParams(top_p=0.0)),
    }
    outputs = engine.generate([good, *bad.values()])
    assert outputs[0].finish_reason == "length" and len(outputs[0].token_ids) == 4
    for out in outputs[1:]:
        assert out.finish_reason == "error" and out.error and out.token_ids == [], out.request_id
    messages = {o.request_id: o.error for o in outputs[1:]}
    assert "empty prompt" in messages["empty"] and "max_model_len" in messages["too long"]
    assert "[0, 300)" in messages["beyond vocab"] and "max_tokens" in messages["max_tokens 0"]


def test_a_wrongly_typed_request_after_good_ones_leaves_nothing_queued_for_the_next_call():
    engine = tiny_engine()
    good = [Request(str(i), [5, 6 + i], SamplingParams(max_tokens=3, ignore_eos=True)) for i in range(2)]
    outputs = engine.generate([*good, {"request_id": "dict"}, Request("s", [5], SamplingParams(max_tokens="4"))])
    assert [len(o.token_ids) for o in outputs[:2]] == [3, 3]
    assert [(o.request_id, o.finish_reason) for o in outputs[2:]] == [("dict", "error"), ("s", "error")]
    assert "max_tokens" in outputs[3].error and "'4'" in outputs[3].error
    assert engine.is_idle()


def test_a_call_that_fails_part_way_leaves_the_engine_idle_and_the_next_call_unaffected(monkeypatch):
    engine = tiny_engine()
    requests = [Request(str(i), [5, 6 + i], SamplingParams(max_tokens=6, ignore_eos=True)) for i in range(3)]
    expected = [o.token_ids for o in engine.generate(requests)]
    real_execute, calls = engine.runner.execute, []

    def failing_on_third_step(batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real_execute(batch)

    monkeypatch.setattr(engine.runner, "execute", failing_on_third_step)
    with pytest.raises(RuntimeError, match="device lost"):
        engine.generate(requests)
    assert engine.is_idle() and engine.llm.kv.num_free_blocks == engine.llm.kv.num_blocks
    assert [o.token_ids for o in engine.generate(requests[:1])] == expected[:1]


def test_stop_tokens_and_eos_end_a_request_unless_eos_is_ignored():
    engine = tiny_engine()
    free_run = greedy(engine, [[5, 6, 7]])[0].token_ids
    first = free_run[0]
    stopped = engine.generate([Request("s", [5, 6, 7], SamplingParams(max_tokens=8, stop_token_ids=(first,)))])[0]
    assert (stopped.finish_reason, stopped.token_ids) == ("stop", [first])
    eos_engine = tiny_engine(config={**TINY, "eos_token_id": first})
    assert eos_engine.eos_token_id == first
    assert greedy(eos_engine, [[5, 6, 7]], ignore_eos=False)[0].finish_reason == "stop"
    assert greedy(eos_engine, [[5, 6, 7]])[0].token_ids == free_run


def test_each_token_gets_a_monotonic_timestamp_after_arrival():
    out = greedy(tiny_engine(), [[5, 6, 7]], max_tokens=5)[0]
    assert len(out.token_times) == 5 and out.token_times == sorted(out.token_times)
    assert out.token_times[0] >= out.arrival_time


def test_a_seed_fixes_sampled_tokens_whatever_else_is_in_the_batch():
    engine = tiny_engine()
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=11, ignore_eos=True)
    alone = engine.generate([Request("a", [5, 6], params)])[0].token_ids
    crowd = [Request(str(i), [9, i], SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)) for i in range(5)]
    together = engine.generate([*crowd, Request("a", [5, 6], params)])[-1].token_ids
    other_seed = engine.generate([Request("a", [5, 6], SamplingParams(**{**_fields(params), "seed": 12}))])[0]
    assert alone == together
    assert other_seed.token_ids != alone


def _fields(params: SamplingParams) -> dict:
    return {name: getattr(params, name) for name in SamplingParams.__slots__}


def test_stats_split_step_time_between_steps_with_prompt_tokens_and_decode_only_steps():
    engine = tiny_engine(max_num_batched_tokens=16)
    start = time.perf_counter()
    greedy(engine, [list(range(5, 45)), [8, 9]])
    wall = time.perf_counter() - start
    stats = engine.stats()
    assert stats["prefill_steps"] >= 3  # 40 prompt tokens in chunks of at most 16
    assert stats["steps"] > stats["prefill_steps"]  # then decode-only steps
    assert stats["prefill_step_seconds"] > 0 and stats["decode_step_seconds"] > 0
    assert stats["prefill_step_seconds"] + stats["decode_step_seconds"] <= wall


def test_stats_mark_random_weights_and_account_kv_memory():
    engine = tiny_engine()
    greedy(engine, [[5, 6, 7], [8, 9]])
    stats = engine.stats()
    assert stats["model_random_weights"] is True
    assert stats["kv_blocks_used"] == 0 and stats["kv_blocks_free"] == stats["kv_blocks_total"]
    assert stats["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 KV heads, head_dim 16, fp32
    assert 0 <= stats["kv_waste_pct"] < 100 and stats["generated_tokens"] == 16
    # 4 MiB pool = 512 blocks of 16 tokens; paged: 3 blocks per 40-token sequence, contiguous: 96 tokens = 6
    assert stats["kv_blocks_total"] == 512
    assert engine.max_concurrent_sequences([40] * 500, "paged") == 512 // 3
    assert engine.max_concurrent_sequences([40] * 500, "contiguous") == 512 // 6


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_families_match_transformers(family, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(FAMILIES[family])
    torch.manual_seed(0)
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    reference = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32, attn_implementation="sdpa").eval()
    reference.save_pretrained(tmp_path)
    engine = create_engine("own", ModelSpec(family, str(tmp_path)), Technique(), dict(kv_cache_bytes=1 << 22), "cpu")
    prompt = torch.randint(3, 300, (70,), generator=torch.Generator().manual_seed(1)).tolist()
    scored = engine.score([prompt])[0]
    with torch.inference_mode():
        logits = reference(torch.tensor([prompt])).logits[0, :-1]
        expected = logits.log_softmax(-1).gather(1, torch.tensor(prompt[1:])[:, None]).squeeze(1)
        reference.generation_config.eos_token_id = None
        hf_tokens = reference.generate(torch.tensor([prompt[:20]]), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.allclose(torch.tensor(scored.logprobs), expected, atol=1e-5)
    assert greedy(engine, [prompt[:20]], max_tokens=10)[0].token_ids == hf_tokens[0, 20:].tolist()


def test_concurrent_sequences_repeat_the_length_mix_until_the_pool_is_full():
    from engines.own.kv_pool import max_concurrent_sequences

    # lengths 16 and 48 take 1 and 3 blocks: 10 blocks hold 1+3+1+3+1 (the next 3 do not fit)
    assert max_concurrent_sequences(10, 16, [16, 48], "paged", 64) == 5
    # contiguous reserves max_model_len (4 blocks) per sequence whatever its length
    assert max_concurrent_sequences(10, 16, [16, 48], "contiguous", 64) == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("config", [TINY, FAMILIES["qwen2"]], ids=["llama", "qwen2-qkv-bias"])
def test_packed_weights_give_the_same_tokens_as_plain_ones_and_say_so(config, dtype):
    prompts = [[5, 6, 7, 8, 9], [20, 21, 22]]
    spec = ModelSpec("tiny", None, random_config=dict(config), seed=0, dtype=dtype)
    packed, plain = (create_engine("own", spec, Technique(), dict(kv_cache_bytes=1 << 22, pack_weights=pack), "cpu")
                     for pack in (True, False))  # fmt: skip
    # ours on AVX-512 or AVX2 + FMA CPUs, else oneDNN's where it packs this dtype, else plain
    if cpu_kernels.packed_linear_available(getattr(torch, dtype)):
        assert packed.stats()["weight_layout"] == "cpp_tiles"
    elif onednn_packing_available(getattr(torch, dtype)):
        assert packed.stats()["weight_layout"] == "onednn_packed"
    else:
        assert packed.stats()["weight_layout"] == (f"plain (no AVX2 or AVX-512 here for our kernel and no oneDNN "
                                                   f"packing of {dtype} weights in this torch on this CPU)")  # fmt: skip
    assert plain.stats()["weight_layout"] == "plain"
    assert [o.token_ids for o in greedy(packed, prompts)] == [o.token_ids for o in greedy(plain, prompts)]
    half = ModelSpec("tiny", None, random_config=dict(config), seed=0, dtype="float16")
    layout = create_engine("own", half, Technique(), dict(kv_cache_bytes=1 << 22), "cpu").stats()["weight_layout"]
    assert layout == "plain (packing is for float32 and bfloat16 on the CPU)"
