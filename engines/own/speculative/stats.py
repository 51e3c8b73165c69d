"""Acceptance and cost counters of speculative decoding, reported as `engine_stats["speculation"]`.

Definitions follow vLLM's: a "draft" is one sequence's proposal in one step (steps where a proposer found
nothing, e.g. an n-gram miss, are plain decodes and are counted apart); acceptance rate = accepted / proposed
tokens; mean accepted length = 1 + accepted / drafts, counting the token the target adds every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SpecStats:
    method: str
    k: int
    steps: int = 0  # engine steps with at least one decoding sequence
    drafts: int = 0
    proposed: int = 0
    accepted: int = 0
    proposed_at: list[int] = field(default_factory=list)  # per draft position: drafts that reached it
    accepted_at: list[int] = field(default_factory=list)
    empty_drafts: int = 0  # decoding sequence-steps where the proposer proposed nothing
    emitted: int = 0  # tokens emitted by decoding sequences (accepted + the target's own)
    draft_s: float = 0.0  # proposing, plus the draft model's mirror pass
    verify_s: float = 0.0  # the target's pass and the acceptance decisions

    def record(self, proposed: int, accepted: int) -> None:
        """One decoding sequence in one step: `proposed` drafts, of which the first `accepted` were kept."""
        self.emitted += accepted + 1
        if proposed == 0:
            self.empty_drafts += 1
            return
        self.drafts += 1
        self.proposed += proposed
        self.accepted += accepted
        grow = proposed - len(self.proposed_at)
        if grow > 0:
            self.proposed_at += [0] * grow
            self.accepted_at += [0] * grow
        for j in range(proposed):
            self.proposed_at[j] += 1
            self.accepted_at[j] += j < accepted

    def as_dict(self) -> dict:
        per_step = lambda x: x / self.steps if self.steps else None
        decodes = self.drafts + self.empty_drafts
        return {
            "method": self.method,
            "k": self.k,
            "acceptance_rate": self.accepted / self.proposed if self.proposed else None,
            "mean_accepted_length": 1 + self.accepted / self.drafts if self.drafts else None,
            "tokens_per_decode_step": self.emitted / decodes if decodes else None,  # misses included
            "per_position_acceptance": [a / p for a, p in zip(self.accepted_at, self.proposed_at)],
            "draft_s_per_step": per_step(self.draft_s),
            "verify_s_per_step": per_step(self.verify_s),
            "steps": self.steps,
            "drafts": self.drafts,
            "empty_drafts": self.empty_drafts,
            "proposed_tokens": self.proposed,
            "accepted_tokens": self.accepted,
        }
