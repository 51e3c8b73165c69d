"""One forward per shared context: sequences that differ only in their last token (an MMLU question's
four answer letters) need the same logits everywhere, so engines run the context once and read every
member's last token from its final row, as lm-eval's HF backend does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engines.base import ScoredSequence


@dataclass(slots=True)
class ContextGroup:
    context: list[int]  # the forward's input: the members' tokens but their last
    tail: int = 0  # logit rows needed at the end of `context`: the largest member tail
    members: list[tuple[int, int, int]] = field(default_factory=list)  # (sequence index, last token, tail)


def group_by_context(sequences: Sequence[Sequence[int]], tails: Sequence[int]) -> list[ContextGroup]:
    """Groups in first-seen order; sequences and tails are already checked (tail in [1, len - 1])."""
    groups: dict[tuple[int, ...], ContextGroup] = {}
    for index, (seq, tail) in enumerate(zip(sequences, tails)):
        key = tuple(seq[:-1])
        group = groups.get(key)
        if group is None:
            group = groups[key] = ContextGroup(list(key))
        group.tail = max(group.tail, tail)
        group.members.append((index, int(seq[-1]), tail))
    return list(groups.values())


def read_tails(group: ContextGroup, logprobs: torch.Tensor) -> list[tuple[int, ScoredSequence]]:
    """Each member's ScoredSequence from `logprobs` [group.tail, vocab] (float32 log-softmax of the
    context's last `group.tail` positions): rows before the last predict the context's own tokens,
    the last row predicts every member's last token."""
    need = group.tail
    targets = torch.tensor(group.context[len(group.context) - need + 1 :], dtype=torch.long, device=logprobs.device)
    argmax = logprobs.argmax(dim=-1)
    shared = logprobs[:-1].gather(1, targets[:, None]).squeeze(1).tolist()
    shared_greedy = (argmax[:-1] == targets).tolist()
    last_tokens = torch.tensor([token for _, token, _ in group.members], dtype=torch.long, device=logprobs.device)
    last = logprobs[-1].index_select(0, last_tokens).tolist()
    best = int(argmax[-1])
    out = []
    for (index, token, tail), value in zip(group.members, last):
        start = need - tail  # this member's first row among the shared ones
        out.append((index, ScoredSequence(shared[start:] + [value], shared_greedy[start:] + [token == best])))
    return out


def score_whole(
    sequences: list[list[int]], score_tails: Callable[[list[list[int]], list[int]], list[ScoredSequence]]
) -> list[ScoredSequence]:
    """Engine.score through an engine's score_tails: every token after the first (a one-token sequence
    has nothing to predict)."""
    scorable = [i for i, s in enumerate(sequences) if len(s) >= 2]
    scored = score_tails([sequences[i] for i in scorable], [len(sequences[i]) - 1 for i in scorable])
    results = [ScoredSequence([], []) for _ in sequences]
    for i, result in zip(scorable, scored):
        results[i] = result
    return results
