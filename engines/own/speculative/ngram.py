"""N-gram (prompt lookup) proposer: find the latest earlier occurrence of the sequence's last n tokens
(n from max_n down to min_n) and propose the tokens that followed it. No model, no KV cache; it only pays
off when the output repeats its input (summaries, code edits, quoting) and is useless on random tokens.
"""

from __future__ import annotations

import torch

from engines.own.attn_metadata import AttnMetadata
from engines.own.sequence import Sequence
from engines.own.speculative.proposal import Proposal


def lookup(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to k tokens following the latest earlier match of the longest suffix n-gram (min_n <= n <= max_n)."""
    for n in range(min(max_n, len(tokens) - 1), min_n - 1, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # latest match first, never the suffix itself
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n

    def propose(self, seqs: list[Sequence], lengths: list[int]) -> Proposal:
        tokens = [lookup(s.token_ids, n, self.min_n, self.max_n) if n else [] for s, n in zip(seqs, lengths)]
        return Proposal(tokens, [None] * len(seqs))

    def mirror(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata,
               items: list[tuple[Sequence, int]]) -> None:  # fmt: skip
        """No cache of its own to keep in step with the target's."""
