"""engine=llamacpp: llama.cpp (llama-cpp-python) on the embedded Q4_1 GGUF, checked against itself and HF fp32.

The engine tests skip when llama_cpp is not importable (install: engines/llamacpp/install.sh .venv/bin/python);
the model-resolution and technique tests run everywhere.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch

from engines.base import (
    Attention,
    Batching,
    EngineOptions,
    Graphs,
    KVCache,
    ModelSpec,
    Quant,
    Request,
    SamplingParams,
    Technique,
    UnsupportedTechnique,
)
from engines.llamacpp.config import LlamaCppOptions
from engines.llamacpp.engine import LlamaCppEngine

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not HAVE_LLAMA_CPP, reason="llama_cpp is not installed (engines/llamacpp/install.sh .venv/bin/python)"
)

EOS = 2
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "def fibonacci(n):",
]
CHAT_HI = "<|im_start|>user\nSay hello in one short sentence.<|im_end|>\n<|im_start|>assistant\n"


def make(spec: ModelSpec, technique: Technique = Technique(), **options) -> LlamaCppEngine:
    return LlamaCppEngine(spec, LlamaCppEngine.resolve_technique(technique), LlamaCppOptions(**options), "cpu")


def requests_for(prompts, **sampling):
    return [Request(f"r{i}", list(p), SamplingParams(**sampling)) for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def spec(smollm2_dir) -> ModelSpec:
    from harness.models import model_spec

    found, kind = model_spec("smollm2-135m", "embedded", "float32")
    assert kind == "embedded-gguf" and found.path == str(smollm2_dir)
    return found


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def engine(spec):
    if not HAVE_LLAMA_CPP:
        pytest.skip("llama_cpp is not installed (engines/llamacpp/install.sh .venv/bin/python)")
    built = make(spec)
    yield built
    built.close()


@pytest.fixture(scope="module")
def reference(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=EOS)  # fmt: skip
    return out[0, len(prompt) :].tolist()


# --- model resolution and techniques: no llama_cpp needed -------------------------------------------------------


def test_model_resolution_gives_the_gguf_behind_embedded_and_local_gguf_sources(spec, tmp_path):
    from harness.models import embedded_gguf_path, model_spec

    assert spec.gguf_path == str(embedded_gguf_path()) and spec.gguf_path.endswith(".gguf")
    local, kind = model_spec("m", "local", "float32", local_path=spec.gguf_path)
    assert kind == "gguf" and local.gguf_path == spec.gguf_path and local.path == spec.path
    folder, kind = model_spec("m", "local", "float32", local_path=spec.path)  # an HF folder: no GGUF
    assert kind == "local" and folder.gguf_path is None
    assert model_spec("m", "hub", "float32", hub_id="org/model")[0].gguf_path is None
    assert model_spec("m", "random", "float32", architecture={"vocab_size": 8})[0].gguf_path is None


def test_models_without_a_gguf_are_refused_with_the_fix_named(smollm2_dir):
    with pytest.raises(UnsupportedTechnique, match="random weights"):
        make(ModelSpec("tiny", None, random_config={"vocab_size": 8}))
    with pytest.raises(UnsupportedTechnique, match="model.local_path=.*gguf"):
        make(ModelSpec("folder", str(smollm2_dir)))


def test_techniques_declared_and_the_rest_skipped_with_a_reason():
    applied = LlamaCppEngine.resolve_technique(Technique())
    assert applied == Technique(KVCache.contiguous, Batching.static, False, False, None, Graphs.eager, Quant.gguf)
    assert LlamaCppEngine.resolve_technique(Technique(prefix_cache=True)).prefix_cache is True
    for bad, named in [
        (Technique(kv_cache=KVCache.paged), "kv_cache=paged"),
        (Technique(batching=Batching.continuous), "batching=continuous"),
        (Technique(chunked_prefill=True), "chunked_prefill=True"),
        (Technique(attention=Attention.sdpa), "attention=sdpa"),
        (Technique(graphs=Graphs.compile), "graphs=compile"),
        (Technique(quant=Quant.int8), "quant=int8"),
    ]:
        with pytest.raises(UnsupportedTechnique, match=named):
            LlamaCppEngine.resolve_technique(bad)


def test_plain_engine_options_keep_the_fields_they_share():
    from engines.llamacpp.engine import as_options

    from engines.hf.config import HfOptions

    opts = as_options(HfOptions(max_model_len=64, python="/x/python"))
    assert isinstance(opts, LlamaCppOptions) and opts.name == "llamacpp"
    assert (opts.max_model_len, opts.python, opts.n_batch) == (64, "/x/python", 512)
    assert as_options(EngineOptions()) == LlamaCppOptions()
    with pytest.raises(ValueError, match="engine.n_batch must be >= 1"):
        LlamaCppOptions(n_batch=0)


# --- the engine on the embedded Q4_1 GGUF -----------------------------------------------------------------------


@needs_llama_cpp
def test_ignore_eos_gives_exact_lengths_with_increasing_timestamps_after_arrival(engine, prompt_ids):
    lengths = [1, 7, 33, 20]
    before = time.perf_counter()
    reqs = [Request(f"r{i}", p, SamplingParams(max_tokens=n, ignore_eos=True)) for i, (p, n) in
            enumerate(zip(prompt_ids, lengths))]  # fmt: skip
    outs = engine.generate(reqs)
    assert [len(o.token_ids) for o in outs] == lengths
    for out, p in zip(outs, prompt_ids):
        assert out.finish_reason == "length" and out.error is None and out.prompt_len == len(p)
        assert len(out.token_times) == len(out.token_ids)
        assert before <= out.arrival_time < out.token_times[0]
        assert all(a < b for a, b in zip(out.token_times, out.token_times[1:]))
    assert len({o.arrival_time for o in outs}) == 1  # the batch's acceptance time


@needs_llama_cpp
def test_greedy_is_deterministic_and_coherent(engine, prompt_ids, tokenizer):
    first = engine.generate(requests_for(prompt_ids, max_tokens=16, ignore_eos=True))
    second = engine.generate(requests_for(prompt_ids, max_tokens=16, ignore_eos=True))
    assert [o.token_ids for o in first] == [o.token_ids for o in second]
    text = tokenizer.decode(first[0].token_ids)
    assert "Paris" in text, text
    for out in first:
        words = tokenizer.decode(out.token_ids).split()
        assert len(words) >= 3 and sum(w.isascii() for w in words) >= 0.9 * len(words)


@needs_llama_cpp
def test_eos_ends_a_request_and_ignore_eos_goes_on_past_it_with_the_same_tokens(engine, tokenizer):
    prompt = tokenizer(CHAT_HI)["input_ids"]
    stopped = engine.generate(requests_for([prompt], max_tokens=64))[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == EOS, tokenizer.decode(stopped.token_ids)
    n = len(stopped.token_ids)
    going = engine.generate(requests_for([prompt], max_tokens=n + 5, ignore_eos=True))[0]
    assert going.finish_reason == "length" and len(going.token_ids) == n + 5
    assert going.token_ids[:n] == stopped.token_ids  # EOS itself is generated, never masked


@needs_llama_cpp
def test_stop_token_ends_the_request_and_is_kept(engine, prompt_ids):
    free = engine.generate(requests_for(prompt_ids[:1], max_tokens=12, ignore_eos=True))[0].token_ids
    stop = free[5]
    out = engine.generate(requests_for(prompt_ids[:1], max_tokens=12, ignore_eos=True, stop_token_ids=(stop,)))[0]
    assert out.finish_reason == "stop" and out.token_ids == free[: free.index(stop) + 1]


@needs_llama_cpp
def test_bad_requests_fail_alone(engine, prompt_ids):
    reqs = [
        Request("ok1", prompt_ids[0], SamplingParams(max_tokens=4, ignore_eos=True)),
        Request("oov", [engine.vocab_size + 5], SamplingParams(max_tokens=4)),
        Request("empty", [], SamplingParams(max_tokens=4)),
        Request("temp", prompt_ids[1], SamplingParams(max_tokens=4, temperature=-1.0)),
        Request("long", [5] * engine.context_len, SamplingParams(max_tokens=4)),
        Request("ok2", prompt_ids[1], SamplingParams(max_tokens=4, ignore_eos=True)),
    ]
    outs = engine.generate(reqs)
    assert [o.request_id for o in outs] == [r.request_id for r in reqs]
    assert [o.finish_reason for o in outs] == ["length", "error", "error", "error", "error", "length"]
    assert "out of range" in outs[1].error and "empty" in outs[2].error and "temperature" in outs[3].error
    assert "max_model_len" in outs[4].error
    alone = engine.generate(requests_for(prompt_ids[:2], max_tokens=4, ignore_eos=True))
    assert [outs[0].token_ids, outs[5].token_ids] == [o.token_ids for o in alone]


@needs_llama_cpp
def test_seeded_sampling_is_reproducible_and_differs_from_greedy(engine, prompt_ids):
    params = dict(max_tokens=24, ignore_eos=True, temperature=1.0, top_k=50, top_p=0.95)
    a = engine.generate(requests_for(prompt_ids[:1], seed=7, **params))[0].token_ids
    b = engine.generate(requests_for(prompt_ids[:1], seed=7, **params))[0].token_ids
    c = engine.generate(requests_for(prompt_ids[:1], seed=8, **params))[0].token_ids
    assert a == b and a != c and len(a) == 24


@needs_llama_cpp
def test_prefix_cache_reuses_the_shared_prefix_and_gives_the_same_tokens(spec, engine, prompt_ids):
    shared = prompt_ids[1] + prompt_ids[2]
    prompts = [shared + [42, 43], shared + [44], prompt_ids[0]]
    cached = make(spec, Technique(prefix_cache=True))
    try:
        got = cached.generate(requests_for(prompts, max_tokens=8, ignore_eos=True))
        assert cached.stats()["prefix_cache_hit_tokens"] == len(shared)
    finally:
        cached.close()
    want = engine.generate(requests_for(prompts, max_tokens=8, ignore_eos=True))
    assert [o.token_ids for o in got] == [o.token_ids for o in want]


@needs_llama_cpp
def test_generation_ends_at_max_model_len(spec, prompt_ids):
    small = make(spec, max_model_len=32)
    try:
        out = small.generate(requests_for([list(range(100, 120))], max_tokens=50, ignore_eos=True))[0]
        assert len(out.token_ids) == 12 and out.finish_reason == "length"
        assert small.stats()["max_model_len"] == 32 and small.stats()["n_ctx"] >= 32
    finally:
        small.close()


@needs_llama_cpp
def test_greedy_tokens_mostly_agree_with_hf_fp32(engine, reference, prompt_ids):
    """Q4_1 against the float32 dequantized copy: the same weights up to 4-bit rounding of activations' inputs."""
    ours = engine.generate(requests_for(prompt_ids, max_tokens=16, ignore_eos=True))
    first4 = first16 = 0
    for out, prompt in zip(ours, prompt_ids):
        theirs = hf_greedy(reference, prompt, 16)
        same = [a == b for a, b in zip(out.token_ids, theirs)]
        first4 += sum(same[:4])
        first16 += sum(same)
    rate4, rate16 = first4 / (4 * len(prompt_ids)), first16 / (16 * len(prompt_ids))
    print(f"llamacpp Q4_1 vs HF fp32 greedy agreement: first 4 tokens {rate4:.0%}, first 16 tokens {rate16:.0%}")
    assert rate4 >= 0.5


@needs_llama_cpp
def test_score_log_probs_track_hf_fp32(engine, reference, prompt_ids, tokenizer):
    seqs = [p + tokenizer(" and so on, until the end.")["input_ids"] for p in prompt_ids]
    scored = engine.score(seqs)
    diffs, ours_all, theirs_all, greedy_agree = [], [], [], []
    for seq, got in zip(seqs, scored):
        ids = torch.tensor([seq])
        with torch.inference_mode():
            logp = torch.log_softmax(reference(input_ids=ids).logits[0, :-1].double(), dim=-1)
        want = logp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1).numpy()
        assert len(got.logprobs) == len(got.is_greedy) == len(seq) - 1
        assert all(v <= 0 for v in got.logprobs)
        greedy_agree.append(np.mean(np.array(got.is_greedy) == (logp.argmax(-1) == ids[0, 1:]).numpy()))
        diffs += list(np.abs(np.array(got.logprobs) - want))
        ours_all += got.logprobs
        theirs_all += list(want)
    mad = float(np.mean(diffs))
    corr = float(np.corrcoef(ours_all, theirs_all)[0, 1])
    print(f"llamacpp score vs HF fp32: mean |dlogp| {mad:.3f} nats, max {max(diffs):.3f}, correlation {corr:.4f}, "
          f"is_greedy agreement {np.mean(greedy_agree):.0%}")  # fmt: skip
    assert mad < 0.25 and corr > 0.99 and np.mean(greedy_agree) >= 0.8  # measured: 0.071, 0.9996
    with pytest.raises(ValueError, match="out of range"):
        engine.score([[engine.vocab_size]])


@needs_llama_cpp
def test_stats_record_threads_quantization_and_memory(spec, engine):
    stats = engine.stats()
    assert stats["n_threads"] == torch.get_num_threads() == 1  # conftest sets the cell's torch threads to 1
    assert stats["threads_source"].startswith("torch")
    assert stats["quantization"] == "Q4_1" and stats["n_ctx"] == 8192 and stats["max_model_len"] == 8192
    assert stats["llama_cpp_python"] and stats["peak_rss_bytes"] > 50e6 and stats["n_batch"] == 512
    two = make(spec, n_threads=2, max_model_len=256)
    try:
        assert two.stats()["n_threads"] == 2 and two.stats()["threads_source"] == "engine.n_threads"
    finally:
        two.close()
