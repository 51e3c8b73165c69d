"""Sampler: greedy, top-k and top-p masks, temperature, per-request seeds."""

from __future__ import annotations

import math

import torch

from engines.base import SamplingParams
from engines.own.sampler import sample, top_k_mask, top_p_mask

NEG_INF = float("-inf")


def test_greedy_rows_take_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    assert sample(logits, [SamplingParams(), SamplingParams()], [None, None]).tolist() == [1, 0]


def test_top_k_keeps_the_k_largest_per_row_and_zero_means_off():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    masked = top_k_mask(logits, torch.tensor([2, 0]))
    assert masked[0].tolist() == [NEG_INF, 4.0, 3.0, NEG_INF]
    assert masked[1].tolist() == logits[1].tolist()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = top_p_mask(logits, torch.tensor([0.8])).isfinite()[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.8, 0.5 + 0.3 reaches it
    assert top_p_mask(logits, torch.tensor([0.81])).isfinite()[0].tolist() == [True, True, True, False]
    assert top_p_mask(logits, torch.tensor([0.1])).isfinite()[0].tolist() == [True, False, False, False]


def test_top_p_mask_follows_token_order_not_position():
    logits = torch.tensor([[0.05, 0.15, 0.5, 0.3]]).log()
    assert top_p_mask(logits, torch.tensor([0.8])).isfinite()[0].tolist() == [False, False, True, True]


def test_same_seed_gives_the_same_draws_and_other_seeds_differ():
    logits = torch.zeros(1, 1000)  # uniform: draws depend only on the RNG
    params = [SamplingParams(temperature=1.0, seed=3)]

    def draws(seed):
        gen = torch.Generator().manual_seed(seed)
        return [sample(logits, params, [gen]).item() for _ in range(8)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_sampling_respects_top_k_support_and_temperature_sharpens():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    top2 = sample(logits, [SamplingParams(temperature=1.0, top_k=2)] * 2000, [gen] * 2000)
    assert set(top2.tolist()) <= {0, 1}
    share_first = (top2 == 0).float().mean().item()
    expected = math.exp(2) / (math.exp(2) + math.exp(1))  # 0.73
    assert abs(share_first - expected) < 0.04
    cold = sample(logits, [SamplingParams(temperature=0.1)] * 2000, [gen] * 2000)
    assert (cold == 0).float().mean().item() > 0.99


def test_greedy_and_sampled_rows_mix_in_one_batch():
    logits = torch.tensor([[0.0, 9.0], [0.0, 0.0]])
    gen = torch.Generator().manual_seed(1)
    out = sample(logits, [SamplingParams(), SamplingParams(temperature=1.0, seed=1)], [None, gen])
    assert out[0].item() == 1 and out[1].item() in (0, 1)


def test_a_seeded_row_draws_the_same_whatever_its_batch_mates():
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0.9, top_p=0.95, seed=s) for s in (5, 6, 7)]

    def first_row(rows):
        gens = [torch.Generator().manual_seed(5)] + [torch.Generator().manual_seed(6 + i) for i in range(rows - 1)]
        return sample(logits[:rows], params[:rows], gens)[0].item()

    assert first_row(1) == first_row(3)


def test_inverse_cdf_never_picks_a_zero_probability_token_and_follows_the_distribution():
    from engines.own.sampler import inverse_cdf

    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0]]).repeat(4000, 1)
    draws = inverse_cdf(probs, torch.rand(4000, generator=torch.Generator().manual_seed(0)))
    assert set(draws.tolist()) <= {1, 3}
    assert abs((draws == 3).float().mean().item() - 0.75) < 0.03
    edges = inverse_cdf(probs[:2], torch.tensor([0.0, 1.0 - 1e-7]))
    assert edges.tolist() == [1, 3]
