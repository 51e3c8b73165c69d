"""Next-token choice for a batch of logit rows: greedy, temperature, top-k, top-p, per-request seeds.

Everything stays on the device; the caller fetches the chosen ids with one host copy per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engines.base import SamplingParams


def top_k_mask(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Set to -inf every logit below each row's k-th largest (k = 0 keeps the row whole)."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab).long()
    kth_largest = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_mask(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep each row's smallest set of most likely tokens whose probability reaches top_p (at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
    drop_sorted = mass_before >= top_p[:, None]
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    argmax_rows: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits.argmax(dim=-1),
) -> torch.Tensor:
    """Chosen token ids `[N]` (int64, on the logits' device) for float32 logits `[N, vocab]`; `argmax_rows`
    gives the greedy ones (the model's ops: on the CPU our kernel)."""
    greedy = argmax_rows(logits)
    sampled_rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not sampled_rows:
        return greedy
    device = logits.device
    rows = torch.tensor(sampled_rows, device=device)
    chosen = [params[i] for i in sampled_rows]
    temperature = torch.tensor([p.temperature for p in chosen], device=device, dtype=logits.dtype)
    scaled = logits[rows] / temperature[:, None]
    if any(p.top_k > 0 for p in chosen):
        scaled = top_k_mask(scaled, torch.tensor([p.top_k for p in chosen], device=device))
    if any(p.top_p < 1.0 for p in chosen):
        scaled = top_p_mask(scaled, torch.tensor([p.top_p for p in chosen], device=device, dtype=logits.dtype))
    probs = scaled.softmax(dim=-1)
    uniforms = _uniforms([generators[i] for i in sampled_rows], device)
    return greedy.index_copy(0, rows, inverse_cdf(probs, uniforms))


def _uniforms(generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One U[0, 1) draw per row: seeded rows from their own generator (so a request's draws do not depend on
    its batch mates), the others from the global RNG in one call."""
    draws = torch.empty(len(generators), device=device)
    unseeded = [j for j, g in enumerate(generators) if g is None]
    if unseeded:
        draws[unseeded] = torch.rand(len(unseeded), device=device)
    for j, g in enumerate(generators):
        if g is not None:
            draws[j] = torch.rand((), generator=g, device=device)
    return draws


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative probability exceeds `uniforms * total`: a draw from `probs`
    for the whole batch in two ops (a zero-probability token is never chosen: its cumulative sum is flat)."""
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)
