"""Early-exit self-draft: the target's first N layers, then its final norm and LM head. It shares the
target's weights and the KV of those N layers: the target's own passes already wrote that KV for every
computed token, so it needs no prefill; the slots it writes for drafts are overwritten by the verify pass.
"""

from __future__ import annotations

import torch

from engines.own.attn_metadata import AttnMetadata
from engines.own.model import CausalLM
from engines.own.sequence import Sequence
from engines.own.speculative.proposal import Proposal, draft_autoregressively


class EarlyExitProposer:
    def __init__(self, target: CausalLM, num_layers: int, block_size: int, device: torch.device) -> None:
        if not 1 <= num_layers < target.config.num_layers:
            raise ValueError(f"technique.spec_exit_layer must be in [1, {target.config.num_layers - 1}] for this "
                             f"model ({target.config.num_layers} layers), got {num_layers}")  # fmt: skip
        self.target, self.num_layers = target, num_layers
        self.block_size, self.device = block_size, device

    def _logits(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata) -> torch.Tensor:
        meta.backend_state = self.target.attention.prepare(meta, self.block_size)
        return self.target.logits(self.target.forward_prepared(input_ids, positions, meta, self.num_layers))

    def propose(self, seqs: list[Sequence], lengths: list[int]) -> Proposal:
        return draft_autoregressively(self._logits, seqs, lengths, self.block_size, self.device)

    def mirror(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata,
               items: list[tuple[Sequence, int]]) -> None:  # fmt: skip
        """Its KV is the target's: nothing to do."""
