"""Verification: which proposed tokens the target keeps, and the one token it adds.

Greedy requests keep drafts while they equal the target's argmax, then take the target's argmax. Sampled
requests use the exact rejection rule (Leviathan et al. 2023, Chen et al. 2023): draft x drawn from q is
accepted with probability min(1, p(x)/q(x)); on rejection the token is drawn from max(0, p - q)
normalised; if all k are accepted a bonus token is drawn from p at position k. Each emitted token is then
distributed exactly as the target's sampler would have drawn it.
"""

from __future__ import annotations

import torch

from engines.base import SamplingParams
from engines.own.sampler import top_k_mask, top_p_mask


def target_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The distribution the sampler draws from, per row: temperature, then top-k, then top-p."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device, dtype=logits.dtype)
    scaled = logits / temperature[:, None]
    if any(p.top_k > 0 for p in params):
        scaled = top_k_mask(scaled, torch.tensor([p.top_k for p in params], device=device))
    if any(p.top_p < 1.0 for p in params):
        scaled = top_p_mask(scaled, torch.tensor([p.top_p for p in params], device=device, dtype=logits.dtype))
    return scaled.softmax(dim=-1)


def verify_greedy(logits: torch.Tensor, drafts: list[int]) -> list[int]:
    """`logits` [len(drafts) + 1, vocab]: the target's rows at the pending token and at each draft."""
    best = logits.argmax(dim=-1).tolist()
    out = []
    for j, token in enumerate(drafts):
        if best[j] != token:
            return out + [best[j]]
        out.append(token)
    return out + [best[len(drafts)]]


def verify_sampled(
    p: torch.Tensor, q: torch.Tensor | None, drafts: list[int], generator: torch.Generator | None
) -> list[int]:
    """`p` [len(drafts) + 1, vocab]: target probabilities; `q` [len(drafts), vocab]: the draft distribution
    the drafts were drawn from, or None when the proposal was deterministic (q one-hot at the draft)."""
    out = []
    uniforms = torch.rand(len(drafts), generator=generator, device=p.device, dtype=p.dtype)
    for j, token in enumerate(drafts):
        q_token = q[j, token] if q is not None else 1.0
        if uniforms[j] * q_token < p[j, token]:  # u < p/q: accepted with probability min(1, p/q)
            out.append(token)
            continue
        if q is not None:
            residual = (p[j] - q[j]).clamp(min=0)
        else:  # max(0, p - onehot(token)): p without the rejected token
            residual = p[j].clone()
            residual[token] = 0
        if residual.sum() <= 0:  # p == q up to rounding: rejection had probability ~0; p is the limit
            residual = p[j]
        return out + [int(torch.multinomial(residual / residual.sum(), 1, generator=generator))]
    return out + [int(torch.multinomial(p[len(drafts)], 1, generator=generator))]
