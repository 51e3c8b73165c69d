"""Speculative decoding never changes greedy tokens, rolls its KV back, and reports what it accepted.

Greedy output with every method and several k must equal spec=none token for token on the embedded
SmolLM2 (fp32), with chunked prefill and continuous batching on, under forced preemption and with prefix
hits. The draft model is the target cut to its first layers (a valid draft: same tokenizer).
"""

from __future__ import annotations

import pytest
import torch
from own_prompts import text_prompts

from engines import create_engine, engine_class
from engines.base import (
    KVCache,
    ModelSpec,
    Request,
    SamplingParams,
    Spec,
    Technique,
    UnsupportedTechnique,
)
from engines.own.sequence import Sequence
from engines.own.speculative.ngram import lookup
from engines.own.speculative.runner import is_decoding
from engines.own.speculative.verifier import verify_greedy

NEW_TOKENS = 12
LENGTHS = [20, 47, 90]
NGRAM = {"spec": Spec.ngram, "spec_ngram_min": 1, "spec_ngram_max": 3}
EARLY = {"spec": Spec.early_exit, "spec_exit_layer": 4}
DRAFT = {"spec": Spec.draft, "spec_draft_layers": 3}


def run(model_dir, prompts, technique: Technique, new_tokens=NEW_TOKENS, **options):
    options = {"kv_cache_bytes": 1 << 27, "max_num_batched_tokens": 64, **options}
    engine = create_engine("own", ModelSpec("smollm2", str(model_dir)), technique, options, "cpu")
    requests = [Request(f"r{i}", p, SamplingParams(max_tokens=new_tokens, ignore_eos=True)) for i, p in enumerate(prompts)]
    outputs = engine.generate(requests)
    assert all(o.finish_reason == "length" for o in outputs), [o.error for o in outputs]
    return outputs, engine.stats()


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    return text_prompts(smollm2_dir, LENGTHS)


@pytest.fixture(scope="module")
def baseline(smollm2_dir, prompts):
    outputs, _ = run(smollm2_dir, prompts, Technique(spec=Spec.none, prefix_cache=False))
    return [o.token_ids for o in outputs]


def test_ngram_lookup_continues_the_latest_match_of_the_longest_suffix():
    assert lookup([5, 6, 7, 1, 2, 9, 1, 2, 8, 4, 1, 2], k=2, min_n=1, max_n=3) == [8, 4]  # "1 2" last seen before 8
    assert lookup([7, 1, 2, 3, 9, 2, 3, 4, 1, 2, 3], k=3, min_n=1, max_n=3) == [9, 2, 3]  # "1 2 3" beats "2 3"
    assert lookup([1, 2, 3, 4], k=4, min_n=1, max_n=3) == []  # no repeat: nothing to propose
    assert lookup([3, 5, 3], k=4, min_n=1, max_n=3) == [5, 3]  # may run up to the end of the sequence


def test_greedy_verification_keeps_the_agreeing_prefix_and_adds_the_targets_token():
    logits = torch.nn.functional.one_hot(torch.tensor([4, 7, 1, 2]), 10).float()  # the target's argmax per row
    assert verify_greedy(logits, [4, 7, 1]) == [4, 7, 1, 2]  # all accepted + bonus
    assert verify_greedy(logits, [4, 5, 1]) == [4, 7]  # first mismatch: the target's token replaces it
    assert verify_greedy(logits[:1], []) == [4]  # no drafts: a plain decode


def test_only_a_sequence_with_just_its_last_token_pending_is_extended_by_drafts():
    seq = Sequence("r", list(range(10)), prompt_len=6, sampling=SamplingParams(), arrival_time=0.0)
    seq.num_computed_tokens = 9
    assert is_decoding(seq, 1)
    seq.num_computed_tokens = 4  # recomputing after preemption, a 1-token chunk cut by the token budget
    assert not is_decoding(seq, 1)
    prompt = Sequence("p", [5], prompt_len=1, sampling=SamplingParams(), arrival_time=0.0)
    assert not is_decoding(prompt, 1)  # a 1-token prompt is a prefill


@pytest.mark.parametrize(
    "technique",
    [Technique(**NGRAM, spec_k=1), Technique(**NGRAM, spec_k=4), Technique(**EARLY, spec_k=2),
     Technique(**DRAFT, spec_k=3)],
    ids=["ngram-k1", "ngram-k4", "early_exit-k2", "draft-k3"],
)  # fmt: skip
def test_greedy_tokens_equal_spec_none(smollm2_dir, prompts, baseline, technique):
    outputs, stats = run(smollm2_dir, prompts, Technique(**{**vars(technique), "prefix_cache": False}))
    assert [o.token_ids for o in outputs] == baseline
    spec = stats["speculation"]
    assert spec["method"] == technique.spec.value and spec["k"] == technique.spec_k
    assert spec["steps"] > 0 and stats["kv_blocks_used"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "technique",
    [Technique(**NGRAM, spec_k=8), Technique(**EARLY, spec_k=6), Technique(**DRAFT, spec_k=1), Technique(**DRAFT, spec_k=6)],
    ids=["ngram-k8", "early_exit-k6", "draft-k1", "draft-k6"],
)  # fmt: skip
def test_greedy_tokens_equal_spec_none_for_more_k(smollm2_dir, prompts, baseline, technique):
    outputs, _ = run(smollm2_dir, prompts, Technique(**{**vars(technique), "prefix_cache": False}))
    assert [o.token_ids for o in outputs] == baseline


@pytest.mark.parametrize("technique", [Technique(**DRAFT, spec_k=4), Technique(**EARLY, spec_k=3)], ids=["draft", "early_exit"])
def test_forced_preemption_and_rollback_keep_tokens_and_leak_no_block(smollm2_dir, prompts, baseline, technique):
    """A pool of 10 blocks of 16 tokens cannot hold the three sequences (10 blocks alone at the end): the
    scheduler preempts, speculation asks for lookahead blocks, rejected drafts give them back."""
    per_token = 46080 + (46080 * 3 // 30 if technique.spec == Spec.draft else 0)  # a 3-layer draft's pool rides along
    engine = create_engine("own", ModelSpec("smollm2", str(smollm2_dir)), Technique(**{**vars(technique), "prefix_cache": False}),
                           {"kv_cache_bytes": 10 * 16 * per_token, "max_num_batched_tokens": 64}, "cpu")  # fmt: skip
    llm = engine.llm
    assert llm.kv.num_blocks == 10
    seqs = [llm.add_request(Request(f"r{i}", p, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)))
            for i, p in enumerate(prompts)]  # fmt: skip
    while llm.has_unfinished():
        llm.step()
        held = [b for s in llm.scheduler.running for b in s.block_table]
        assert len(held) == len(set(held)) == llm.kv.num_used_blocks  # no block counted twice or lost
        for s in llm.scheduler.running:  # after rollback: only the blocks the tokens occupy
            assert len(s.block_table) <= llm.kv.blocks_needed(s.num_tokens)
    assert [s.token_ids[s.prompt_len :] for s in seqs] == baseline
    stats = engine.stats()
    assert stats["preemptions"] > 0 and stats["speculation"]["proposed_tokens"] > stats["speculation"]["accepted_tokens"]
    assert stats["kv_blocks_used"] == 0 and engine.is_idle()


def test_prefix_hits_keep_tokens(smollm2_dir, prompts, baseline):
    """Prefix caching on: the second pass over the same prompts hits the cache (draft KV included)."""
    technique = Technique(**DRAFT, spec_k=4, prefix_cache=True)
    engine = create_engine("own", ModelSpec("smollm2", str(smollm2_dir)), technique,
                           {"kv_cache_bytes": 1 << 27, "max_num_batched_tokens": 64}, "cpu")  # fmt: skip
    requests = [Request(f"r{i}", p, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)) for i, p in enumerate(prompts)]
    first = engine.generate(requests)
    again = engine.generate(requests)
    assert [o.token_ids for o in first] == [o.token_ids for o in again] == baseline
    assert engine.stats()["prefix_cache_hit_tokens"] >= 16 * sum(n // 16 for n in LENGTHS[1:])


def test_repeated_text_is_accepted_and_one_step_is_one_event(smollm2_dir, prompts):
    """A prompt that repeats itself makes the greedy output repeat it too: n-gram drafts get accepted, and
    the tokens of one step share one timestamp (one streaming event)."""
    repeated = prompts[1] * 3
    outputs, stats = run(smollm2_dir, [repeated], Technique(**NGRAM, spec_k=4), new_tokens=24)
    spec = stats["speculation"]
    assert spec["acceptance_rate"] > 0.5
    assert spec["mean_accepted_length"] == pytest.approx(1 + spec["accepted_tokens"] / spec["drafts"])
    assert len(spec["per_position_acceptance"]) == 4
    times = outputs[0].token_times
    assert len(set(times)) < len(times) and times == sorted(times)


def test_engines_without_speculation_skip_it_and_none_is_universal():
    hf = engine_class("hf")
    with pytest.raises(UnsupportedTechnique, match="spec=draft"):
        hf.resolve_technique(Technique(spec=Spec.draft, spec_k=4))
    assert hf.resolve_technique(Technique(spec=Spec.none, spec_k=4)).spec_k is None  # an option of an off technique
    own = engine_class("own").resolve_technique(Technique(spec=Spec.ngram))
    assert (own.spec_k, own.spec_ngram_min, own.spec_ngram_max, own.spec_exit_layer) == (4, 1, 4, None)
    with pytest.raises(UnsupportedTechnique, match="kv_cache=paged"):
        engine_class("own").resolve_technique(Technique(spec=Spec.ngram, kv_cache=KVCache.contiguous))
    with pytest.raises(ValueError, match="spec_k must be an int >= 1"):
        Technique(spec=Spec.ngram, spec_k=0)
