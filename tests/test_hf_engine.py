"""HFEngine: the transformers baseline must produce exactly what `model.generate` produces."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engines import create_engine
from engines.base import (
    Batching,
    Graphs,
    KVCache,
    ModelSpec,
    Request,
    SamplingParams,
    Technique,
    UnsupportedTechnique,
)
from engines.hf.engine import HFEngine

EOS = 2
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,", "1, 2, 3,"]
TINY_LLAMA = {
    "model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def reference(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


def make_engine(smollm2_dir, technique=Technique(), **options) -> HFEngine:
    spec = ModelSpec("smollm2", str(smollm2_dir))
    return create_engine("hf", spec, technique, options, "cpu")


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    return make_engine(smollm2_dir)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def requests_for(prompts, **sampling):
    return [Request(f"r{i}", p, SamplingParams(**sampling)) for i, p in enumerate(prompts)]


def hf_generate(model, prompts, max_new_tokens, device="cpu"):
    """Plain `model.generate` on one left-padded batch, each row cut after its first EOS."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[EOS] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=EOS, pad_token_id=EOS,
        )  # fmt: skip
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


def test_greedy_batch_equals_hf_generate_on_the_same_batch(engine, reference, prompt_ids):
    outputs = engine.generate(requests_for(prompt_ids, max_tokens=10))
    assert [o.token_ids for o in outputs] == hf_generate(reference, prompt_ids, 10)
    assert all(o.finish_reason == "length" and o.error is None for o in outputs)
    assert [o.prompt_len for o in outputs] == [len(p) for p in prompt_ids]


def test_batch_size_one_equals_hf_generate_one_prompt_at_a_time(smollm2_dir, reference, prompt_ids):
    single = make_engine(smollm2_dir, batch_size=1)
    outputs = single.generate(requests_for(prompt_ids, max_tokens=8))
    assert [o.token_ids for o in outputs] == [hf_generate(reference, [p], 8)[0] for p in prompt_ids]


def test_kv_cache_none_gives_the_same_tokens_as_contiguous(smollm2_dir, engine, prompt_ids):
    no_cache = make_engine(smollm2_dir, Technique(kv_cache=KVCache.none))
    assert no_cache.technique.kv_cache == KVCache.none
    requests = requests_for(prompt_ids, max_tokens=6)
    assert [o.token_ids for o in no_cache.generate(requests)] == [o.token_ids for o in engine.generate(requests)]


def test_timestamps_are_monotonic_one_per_token_and_after_arrival(engine, prompt_ids):
    outputs = engine.generate(requests_for(prompt_ids, max_tokens=5))
    for output in outputs:
        assert len(output.token_times) == len(output.token_ids) == 5
        assert output.arrival_time < output.token_times[0]
        assert all(a < b for a, b in zip(output.token_times, output.token_times[1:]))
    # one batch, one decoding step per token: the rows share each step's timestamp
    assert outputs[0].token_times == outputs[1].token_times == outputs[2].token_times
    assert len({o.arrival_time for o in outputs}) == 1


def test_eos_ends_a_request_and_ignore_eos_runs_to_max_tokens_with_the_same_tokens(engine, tokenizer):
    chat = [{"role": "user", "content": "What is 2+2?"}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
    stopped = engine.generate([Request("a", prompt, SamplingParams(max_tokens=40))])[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == EOS
    assert len(stopped.token_ids) < 40

    ignored = engine.generate([Request("b", prompt, SamplingParams(max_tokens=40, ignore_eos=True))])[0]
    assert ignored.finish_reason == "length"
    assert len(ignored.token_ids) == len(ignored.token_times) == 40
    assert ignored.token_ids[: len(stopped.token_ids)] == stopped.token_ids


def test_stop_token_truncates_after_its_first_occurrence(engine, prompt_ids):
    free = engine.generate(requests_for(prompt_ids[:1], max_tokens=10))[0].token_ids
    stop = free[3]
    cut = free.index(stop) + 1
    stopped = engine.generate(requests_for(prompt_ids[:1], max_tokens=10, stop_token_ids=(stop,)))[0]
    assert stopped.token_ids == free[:cut]
    assert stopped.finish_reason == "stop"
    assert len(stopped.token_times) == cut


def test_bad_requests_get_errors_while_the_others_complete(engine, prompt_ids):
    good = Request("good", prompt_ids[0], SamplingParams(max_tokens=4))
    bad = [
        Request("empty", [], SamplingParams()),
        Request("too-long", [5] * engine.context_len, SamplingParams()),
        Request("out-of-range", [5, engine.vocab_size], SamplingParams()),
        Request("negative-id", [5, -1], SamplingParams()),
        Request("zero-tokens", [5, 6], SamplingParams(max_tokens=0)),
        Request("bad-top-p", [5, 6], SamplingParams(temperature=1.0, top_p=0.0)),
    ]
    finished = []
    outputs = engine.generate([bad[0], bad[1], good, *bad[2:]], progress=finished.append)
    by_id = {o.request_id: o for o in outputs}
    assert [o.request_id for o in outputs] == ["empty", "too-long", "good", *[r.request_id for r in bad[2:]]]
    for request in bad:
        out = by_id[request.request_id]
        assert out.finish_reason == "error" and out.error and out.token_ids == []
    assert "empty" in by_id["empty"].error
    assert "context" in by_id["too-long"].error
    assert "out of range" in by_id["out-of-range"].error and "out of range" in by_id["negative-id"].error
    assert "max_tokens" in by_id["zero-tokens"].error and "top_p" in by_id["bad-top-p"].error
    assert by_id["good"].token_ids == engine.generate([good])[0].token_ids
    assert sum(finished) == len(outputs)


def test_requests_with_different_sampling_are_each_sampled_with_their_own(engine, prompt_ids):
    greedy_alone = engine.generate(requests_for(prompt_ids[:1], max_tokens=6))[0]
    sampled = Request("hot", prompt_ids[1], SamplingParams(max_tokens=6, temperature=1.5, top_k=20, seed=3))
    mixed = engine.generate([Request("cold", prompt_ids[0], SamplingParams(max_tokens=6)), sampled])
    assert mixed[0].token_ids == greedy_alone.token_ids
    again = engine.generate([sampled])[0]
    assert mixed[1].token_ids == again.token_ids  # same seed, same batch composition


def test_score_agrees_with_a_direct_forward_pass(smollm2_dir, reference, prompt_ids):
    # a small token budget forces several right-padded batches
    scorer = make_engine(smollm2_dir, max_num_batched_tokens=24)
    sequences = [prompt_ids[1], prompt_ids[0], [1], prompt_ids[2] + [EOS]]
    scored = scorer.score(sequences)
    assert len(scorer.score_batches(sequences)) > 1
    for seq, result in zip(sequences, scored):
        with torch.inference_mode():
            logits = reference(input_ids=torch.tensor([seq])).logits[0, :-1]
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(seq[1:], dtype=torch.long)
        expected = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        assert len(result.logprobs) == len(result.is_greedy) == len(seq) - 1
        torch.testing.assert_close(torch.tensor(result.logprobs), expected, atol=1e-4, rtol=1e-4)
        assert result.is_greedy == (logprobs.argmax(-1) == targets).tolist()


def test_score_rejects_empty_and_out_of_range_sequences(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.score([[1, 2], []])
    with pytest.raises(ValueError, match="out of range"):
        engine.score([[1, engine.vocab_size]])


def test_unsupported_techniques_are_named_and_defaults_are_filled():
    with pytest.raises(UnsupportedTechnique, match="kv_cache=paged.*batching=continuous.*graphs=cuda_graphs"):
        HFEngine.resolve_technique(
            Technique(kv_cache=KVCache.paged, batching=Batching.continuous, graphs=Graphs.cuda_graphs)
        )
    with pytest.raises(UnsupportedTechnique, match="prefix_cache=True"):
        HFEngine.resolve_technique(Technique(prefix_cache=True))
    applied = dataclasses.asdict(HFEngine.resolve_technique(Technique()))
    assert {k: applied[k] for k in HFEngine.defaults} == HFEngine.defaults
    assert all(v is None for k, v in applied.items() if k not in HFEngine.defaults)  # spec options: spec is off


def test_random_weights_are_seeded_and_reported():
    spec = ModelSpec("tiny", None, random_config=TINY_LLAMA, seed=5)
    first = create_engine("hf", spec, Technique(), {}, "cpu")
    second = create_engine("hf", spec, Technique(), {}, "cpu")
    other = create_engine("hf", dataclasses.replace(spec, seed=6), Technique(), {}, "cpu")
    requests = requests_for([[1, 7, 9, 11]], max_tokens=8, ignore_eos=True)
    tokens = first.generate(requests)[0].token_ids
    assert tokens == second.generate(requests)[0].token_ids
    assert first.score([[1, 7, 9, 11]])[0].logprobs != other.score([[1, 7, 9, 11]])[0].logprobs
    stats = first.stats()
    assert stats["random_weights"] is True
    assert stats["param_bytes"] == sum(p.numel() * 4 for p in first.model.parameters())


def test_generation_ends_at_the_models_context_length():
    tiny = create_engine("hf", ModelSpec("tiny", None, random_config=TINY_LLAMA), Technique(), {}, "cpu")
    context = TINY_LLAMA["max_position_embeddings"]
    near_end = Request("near-end", [3] * (context - 2), SamplingParams(max_tokens=5, ignore_eos=True))
    output = tiny.generate([near_end])[0]
    assert len(output.token_ids) == 2 and output.finish_reason == "length"


def test_stats_report_parameters_kv_bytes_and_memory(smollm2_dir, prompt_ids):
    fresh = make_engine(smollm2_dir)
    fresh.generate(requests_for(prompt_ids, max_tokens=4))
    stats = fresh.stats()
    assert stats["random_weights"] is False and stats["device"] == "cpu" and stats["dtype"] == "float32"
    assert 500e6 < stats["param_bytes"] < 600e6  # 134.5M float32 parameters, tied embeddings counted once
    # 30 layers x (K + V) x 3 KV heads x 64 dims x 4 bytes per cached token; 3 rows of the padded width
    # plus the 3 generated tokens that were fed back (the 4th is never fed)
    per_token = 30 * 2 * 3 * 64 * 4
    assert stats["kv_bytes_allocated"] == per_token * 3 * (max(len(p) for p in prompt_ids) + 3)
    assert stats["peak_rss_bytes"] > stats["param_bytes"]
    assert fresh.eos_token_id == EOS


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_greedy_tokens_equal_hf_generate_and_peak_memory_is_reported(smollm2_dir, reference, prompt_ids):
    spec = ModelSpec("smollm2", str(smollm2_dir))
    gpu = create_engine("hf", spec, Technique(), {}, "cuda")
    outputs = gpu.generate(requests_for(prompt_ids, max_tokens=8))
    try:
        expected = hf_generate(reference.to("cuda"), prompt_ids, 8, device="cuda")
    finally:
        reference.to("cpu")
    assert [o.token_ids for o in outputs] == expected
    stats = gpu.stats()
    assert stats["peak_memory_bytes"] >= stats["param_bytes"] > 0


def test_progress_hears_of_each_request_when_it_finishes_not_when_its_batch_ends(engine, prompt_ids):
    import time

    calls: list[tuple[int, float]] = []
    requests = [Request(f"r{n}", prompt_ids[0], SamplingParams(max_tokens=n, ignore_eos=True)) for n in (2, 5, 5)]
    outputs = engine.generate(requests, progress=lambda n: calls.append((n, time.perf_counter())))
    assert [len(o.token_ids) for o in outputs] == [2, 5, 5]
    assert [n for n, _ in calls] == [1, 2]  # one batch, two moments
    assert calls[0][1] < outputs[1].token_times[-1]  # the short one was counted before the batch ended
