"""Scoring for lm-eval (`score_tails`): one forward per shared context and prefix-cached few-shot prompts give
the log-likelihoods that scoring every choice on its own gives."""

from __future__ import annotations

import random

import pytest

from engines import create_engine
from engines.base import ModelSpec, Technique

TOLERANCE = 1e-4  # the bar against lm-eval's HF backend; fp32 runs agree to about 1e-5
CHOICES = (330, 331, 332, 333)  # " A" .. " D"-like single tokens


@pytest.fixture(scope="module")
def model(smollm2_dir) -> ModelSpec:
    return ModelSpec(name="smollm2-135m", path=str(smollm2_dir), dtype="float32")


def few_shot_questions(num_questions: int, prefix_len: int = 100, seed: int = 0) -> list[list[int]]:
    """Contexts sharing a `prefix_len`-token prefix (the exemplars), each with its own question tail."""
    rng = random.Random(seed)
    prefix = [rng.randrange(100, 40000) for _ in range(prefix_len)]
    return [prefix + [rng.randrange(100, 40000) for _ in range(17 + 5 * q)] for q in range(num_questions)]


def with_choices(contexts: list[list[int]]) -> list[list[int]]:
    return [ctx + [choice] for ctx in contexts for choice in CHOICES]


@pytest.mark.parametrize("engine_name", ["own", "hf"])
def test_one_forward_per_context_equals_scoring_each_choice_on_its_own(model, engine_name):
    engine = create_engine(engine_name, model, Technique(prefix_cache=False) if engine_name == "own" else Technique(),
                           {}, "cpu")  # fmt: skip
    try:
        sequences = with_choices(few_shot_questions(3))
        shared = engine.score_tails(sequences, [1] * len(sequences))  # 3 forwards, 12 answers
        alone = [engine.score([seq])[0] for seq in sequences]  # 12 forwards over every position
        two = engine.score_tails(sequences, [2] * len(sequences))  # a question token as well as the choice
    finally:
        engine.close()
    for seq, one, full, pair in zip(sequences, shared, alone, two):
        assert len(one.logprobs) == 1 and len(pair.logprobs) == 2 and len(full.logprobs) == len(seq) - 1
        assert one.logprobs[0] == pytest.approx(full.logprobs[-1], abs=TOLERANCE)
        assert pair.logprobs == pytest.approx(full.logprobs[-2:], abs=TOLERANCE)
        assert one.is_greedy == full.is_greedy[-1:] and pair.is_greedy == full.is_greedy[-2:]
    # the four choices of one context differ: each was read from the context's last row, not copied
    assert len({round(s.logprobs[0], 6) for s in shared[:4]}) == 4


def test_prefix_cache_reuse_across_score_calls_gives_the_same_log_likelihoods(model):
    contexts = few_shot_questions(4, prefix_len=120)
    cached = create_engine("own", model, Technique(prefix_cache=True), {}, "cpu")
    fresh = create_engine("own", model, Technique(prefix_cache=False), {}, "cpu")
    try:
        first = cached.score_tails(with_choices(contexts[:1]), [1] * 4)  # writes the prefix's blocks
        hits_before = cached.stats()["prefix_cache_hit_tokens"]
        later = cached.score_tails(with_choices(contexts[1:]), [1] * 12)  # three contexts start from them
        hit_tokens = cached.stats()["prefix_cache_hit_tokens"] - hits_before
        reference = fresh.score_tails(with_choices(contexts), [1] * 16)
        assert fresh.stats()["prefix_cache_hit_tokens"] == 0
    finally:
        cached.close()
        fresh.close()
    assert hit_tokens == 3 * (120 // 16) * 16  # every full block of the shared prefix, for each later context
    for got, want in zip(first + later, reference):
        assert got.logprobs == pytest.approx(want.logprobs, abs=TOLERANCE)
        assert got.is_greedy == want.is_greedy


def test_contexts_sharing_a_prefix_in_one_call_wait_a_batch_and_reuse_it(model):
    """Two questions of one subject in the same call: the second waits for the first to write the prefix."""
    contexts = few_shot_questions(2, prefix_len=64, seed=1)
    engine = create_engine("own", model, Technique(prefix_cache=True), {}, "cpu")
    try:
        scored = engine.score_tails(with_choices(contexts), [1] * 8)
        hits = engine.stats()["prefix_cache_hit_tokens"]
        looked_up = engine.stats()["prefix_cache_lookup_tokens"]
        again = [engine.score([seq])[0] for seq in with_choices(contexts)]
    finally:
        engine.close()
    assert hits == 64  # the 4 full blocks of the shared prefix, reused once
    assert looked_up == sum(map(len, contexts))  # each context once, whatever its four choices
    for got, want in zip(scored, again):
        assert got.logprobs[0] == pytest.approx(want.logprobs[-1], abs=TOLERANCE)


@pytest.mark.parametrize("tails", [[0], [5], [1, 1]])
def test_a_tail_outside_the_sequence_is_refused(model, tails):
    engine = create_engine("own", model, Technique(), {}, "cpu")
    try:
        with pytest.raises(ValueError, match="tail"):
            engine.score_tails([[5, 6, 7, 8, 9]], tails)
    finally:
        engine.close()
