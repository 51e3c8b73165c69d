"""Draft-model proposer: a smaller model with the target's tokenizer and its own paged KV pool.

The draft pool has as many blocks as the target's and uses the same block tables, so the target's block
manager allocates, shares (prefix cache), rolls back and frees both at once. To keep that sharing sound the
draft's cache always covers the target's: after every target pass the draft runs the same packed tokens
(`mirror`), prompt chunks and verified positions alike. That costs one small pass per step; vLLM instead
feeds the draft the tokens it missed at the start of the next step.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from engines.base import ModelSpec
from engines.own.attn_metadata import AttnMetadata
from engines.own.kv_pool import allocate_kv_caches
from engines.own.loader import load_model
from engines.own.model import CausalLM
from engines.own.model_runner import ModelRunner
from engines.own.sequence import Sequence
from engines.own.speculative.proposal import Proposal, draft_autoregressively


def load_draft(spec: ModelSpec, num_layers: int | None, device: torch.device, max_model_len: int,
               vocab_size: int) -> CausalLM:  # fmt: skip
    """The draft model, cut to its first `num_layers` layers when given (a layer-truncated target is a draft).
    Random weights are drawn for the cut shape directly: no full-size copy is made (they are random anyway)."""
    if spec.is_random and num_layers is not None:
        layers = min(num_layers, spec.random_config.get("num_hidden_layers", num_layers))
        spec = replace(spec, random_config={**spec.random_config, "num_hidden_layers": layers})
    model, _ = load_model(spec, device, max_model_len)
    if model.config.vocab_size != vocab_size:
        raise ValueError(f"draft model '{spec.name}' has vocab {model.config.vocab_size}, the target "
                         f"{vocab_size}: a draft needs the target's tokenizer")  # fmt: skip
    if num_layers is not None:
        if num_layers > model.config.num_layers:
            raise ValueError(f"technique.spec_draft_layers={num_layers} but draft model '{spec.name}' has "
                             f"{model.config.num_layers} layers")  # fmt: skip
        model.layers = nn.ModuleList(list(model.layers)[:num_layers])
        model.config = replace(model.config, num_layers=num_layers)
    return model


class DraftProposer:
    def __init__(self, draft: CausalLM, attention, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device) -> None:  # fmt: skip
        draft.bind(attention, allocate_kv_caches(draft.config, num_blocks, block_size, dtype, device), block_size)
        self.runner = ModelRunner(draft, block_size, device)  # zeroes each draft block on first write
        self.block_size, self.device = block_size, device

    def _logits(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata) -> torch.Tensor:
        return self.runner.model.logits(self.runner.model.forward(input_ids, positions, meta))

    def propose(self, seqs: list[Sequence], lengths: list[int]) -> Proposal:
        self.runner._zero_new_blocks([(s, n) for s, n in zip(seqs, lengths)])
        return draft_autoregressively(self._logits, seqs, lengths, self.block_size, self.device)

    def mirror(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata,
               items: list[tuple[Sequence, int]]) -> None:  # fmt: skip
        """Write the draft KV of the tokens the target just ran (same ids, positions and slots)."""
        self.runner._zero_new_blocks(items)
        self.runner.model.forward(input_ids, positions, meta)
