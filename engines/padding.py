"""Token sequences of different lengths as one padded batch, and batches sized by a token budget."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, device: str, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of shape (len(seqs), longest). Left padding for generation keeps
    every row's last token in the last column; right padding for scoring keeps positions at 0."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    return ids.to(device), mask.to(device)


def token_budget_batches(lengths: Sequence[int], max_padded_tokens: int, max_rows: int) -> list[list[int]]:
    """Indices grouped longest first, so padding stays small, with rows x longest within the
    budget (a sequence longer than the budget gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches:
            current = batches[-1]
            width = lengths[current[0]]  # the first member is the longest
            if len(current) < max_rows and width * (len(current) + 1) <= max_padded_tokens:
                current.append(index)
                continue
        batches.append([index])
    return batches
