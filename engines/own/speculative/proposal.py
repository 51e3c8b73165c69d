"""What a proposer returns, and the autoregressive loop the model-based proposers share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engines.own.attn_metadata import AttnMetadata, build_metadata
from engines.own.model_runner import slot_of
from engines.own.sequence import Sequence
from engines.own.speculative.verifier import target_probs

# (input_ids [N], positions [N], metadata) -> float32 logits [N, vocab]
LogitsFn = Callable[[torch.Tensor, torch.Tensor, AttnMetadata], torch.Tensor]


@dataclass(slots=True)
class Proposal:
    tokens: list[list[int]]  # per sequence, 0..k proposed ids
    # per sequence: [len(tokens), vocab] draft distribution q the tokens were drawn from (sampled requests),
    # or None: a deterministic proposal (greedy request or n-gram lookup), i.e. q is one-hot
    probs: list[torch.Tensor | None]


def draft_autoregressively(
    logits_fn: LogitsFn, seqs: list[Sequence], lengths: list[int], block_size: int, device: torch.device
) -> Proposal:
    """Up to `lengths[i]` tokens for each sequence, one batched decode pass per position. Pass j feeds the
    token at position num_computed_tokens + j (the pending last token, then each draft) into whatever KV
    cache `logits_fn`'s model writes; the target's verify pass later overwrites those slots."""
    tokens: list[list[int]] = [[] for _ in seqs]
    probs: list[list[torch.Tensor]] = [[] for _ in seqs]
    for j in range(max(lengths, default=0)):
        active = [i for i, n in enumerate(lengths) if n > j]
        fed = [seqs[i].last_token if j == 0 else tokens[i][-1] for i in active]
        positions = [seqs[i].num_computed_tokens + j for i in active]
        meta = build_metadata(
            [slot_of(seqs[i], p, block_size) for i, p in zip(active, positions)],
            [seqs[i].block_table for i in active], [p + 1 for p in positions], [], [], [], device,
        )  # fmt: skip
        as_tensor = lambda xs: torch.tensor(xs, dtype=torch.int64, device=device)
        logits = logits_fn(as_tensor(fed), as_tensor(positions), meta)
        chosen = logits.argmax(dim=-1)
        sampled = [r for r, i in enumerate(active) if seqs[i].sampling.temperature > 0]
        if sampled:
            q = target_probs(logits[sampled], [seqs[active[r]].sampling for r in sampled])
            for row, r in enumerate(sampled):
                i = active[r]
                chosen[r] = torch.multinomial(q[row], 1, generator=seqs[i].generator)[0]
                probs[i].append(q[row])
        for i, token in zip(active, chosen.tolist()):
            tokens[i].append(token)
    return Proposal(tokens, [torch.stack(p) if p else None for p in probs])
