"""Speculative sampling keeps the target's distribution exactly (tiny random model, fixed seeds).

Thousands of seeded requests each sample a short continuation at a low temperature (random weights give
near-uniform logits; a low temperature makes target and draft clearly different). The empirical joint
distribution of two speculated tokens must pass a chi-square goodness-of-fit test against the target's exact
distribution, computed by scoring every continuation. Resampling from p instead of max(0, p - q) after a
rejection fails this test (p-values 6e-49 for k=1 and 2e-91 for k=2 with 6000 draws).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from engines import create_engine
from engines.base import ModelSpec, Request, SamplingParams, Spec, Technique

VOCAB = 8
TINY = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}  # fmt: skip
MODEL = ModelSpec("tiny", None, random_config=TINY, seed=0)
PROMPT = [1, 2, 3, 1, 2]  # periodic, so n-gram lookup proposes something
TEMPERATURE = 0.15
DRAWS = 6000
# a correct sampler fails one case in 1/ALPHA runs of it; a broken rule gives p ~ 1e-13 (see the module docstring)
ALPHA = 1e-4


def engine(technique: Technique):
    return create_engine("own", MODEL, technique, {"kv_cache_bytes": 1 << 24, "max_num_seqs": 512}, "cpu")


def exact_joint_of_tokens_2_and_3() -> torch.Tensor:
    """P(t2, t3) [V, V] under the target at TEMPERATURE, summed over t1 (t4, the bonus, left free)."""
    scored = engine(Technique()).score([PROMPT + list(c) for c in itertools.product(range(VOCAB), repeat=3)])
    logp = torch.tensor([s.logprobs[-3:] for s in scored], dtype=torch.float64).view(VOCAB, VOCAB, VOCAB, 3)
    tempered = lambda lp: (lp / TEMPERATURE).softmax(dim=-1)
    p1 = tempered(logp[:, 0, 0, 0])  # [a]
    p2 = tempered(logp[:, :, 0, 1])  # [a, b]
    p3 = tempered(logp[:, :, :, 2])  # [a, b, c]
    return (p1[:, None, None] * p2[:, :, None] * p3).sum(dim=0)


def sampled_joint(technique: Technique) -> tuple[torch.Tensor, dict]:
    params = lambda i: SamplingParams(max_tokens=4, temperature=TEMPERATURE, seed=i, ignore_eos=True)
    eng = engine(technique)
    outputs = eng.generate([Request(str(i), PROMPT, params(i)) for i in range(DRAWS)])
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for out in outputs:
        counts[out.token_ids[1], out.token_ids[2]] += 1
    return counts, eng.stats()["speculation"]


def fit_p_value(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Chi-square goodness of fit; cells expected below 5 draws are pooled into one."""
    counts, expected = counts.flatten(), expected.flatten() * counts.sum()
    small = expected < 5
    observed, wanted = counts[~small], expected[~small]
    if small.any():
        observed = torch.cat([observed, counts[small].sum()[None]])
        wanted = torch.cat([wanted, expected[small].sum()[None]])
    return float(chisquare(observed.numpy(), wanted.numpy() * observed.sum().item() / wanted.sum().item()).pvalue)


@pytest.fixture(scope="module")
def exact():
    return exact_joint_of_tokens_2_and_3()


@pytest.mark.parametrize(
    "technique",
    [Technique(spec=Spec.draft, spec_k=1, spec_draft_layers=1), Technique(spec=Spec.draft, spec_k=2, spec_draft_layers=1),
     Technique(spec=Spec.ngram, spec_k=2, spec_ngram_min=1, spec_ngram_max=2)],
    ids=["draft-k1", "draft-k2", "ngram-k2"],
)  # fmt: skip
def test_speculative_sampling_matches_the_target_distribution(technique, exact):
    counts, stats = sampled_joint(technique)
    # the test means something only if drafts were both accepted and rejected often
    assert 0.1 < stats["acceptance_rate"] < 0.9, stats
    assert fit_p_value(counts, exact) > ALPHA


def test_the_fit_rejects_a_distribution_that_is_slightly_off(exact):
    """The test has power: the same number of draws from a target tilted by up to 25% fails."""
    tilted = exact * torch.linspace(0.75, 1.25, VOCAB * VOCAB, dtype=torch.float64).view(VOCAB, VOCAB)
    tilted /= tilted.sum()
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(tilted.flatten(), DRAWS, replacement=True, generator=gen)
    counts = torch.bincount(draws, minlength=VOCAB * VOCAB).double().view(VOCAB, VOCAB)
    assert fit_p_value(counts, exact) < ALPHA
