"""Pack one speculative step for the target: every scheduled sequence with the tokens it feeds.

A decoding sequence feeds its pending token plus its drafts (1 + n tokens, scored at every position); a
prefilling one feeds its chunk (scored at the last position if the chunk ends the prompt). Rows with one
token go first, as `AttnMetadata` expects; a multi-token row is a prefill-shaped query over its cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.own.attn_metadata import AttnMetadata, build_metadata
from engines.own.model_runner import slot_of
from engines.own.sequence import Sequence


@dataclass(slots=True)
class VerifyBatch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttnMetadata
    items: list[tuple[Sequence, int]]  # (sequence, tokens fed from its num_computed_tokens), packing order
    scored: dict[int, list[int]]  # id(sequence) -> packed rows whose logits it needs


def pack_verify(fed: list[tuple[Sequence, list[int], bool]], block_size: int, device: torch.device) -> VerifyBatch:
    """`fed`: (sequence, token ids from its num_computed_tokens on, whether every row is scored)."""
    order = [f for f in fed if len(f[1]) == 1] + [f for f in fed if len(f[1]) != 1]
    ids, positions, slots, scored = [], [], [], {}
    decode_tables, decode_lens, prefill_tables, prefill_q, prefill_lens = [], [], [], [], []
    for seq, tokens, score_all in order:
        start, end = seq.num_computed_tokens, seq.num_computed_tokens + len(tokens)
        first_row = len(ids)
        ids.extend(tokens)
        positions.extend(range(start, end))
        slots.extend(slot_of(seq, p, block_size) for p in range(start, end))
        if len(tokens) == 1:
            decode_tables.append(seq.block_table)
            decode_lens.append(end)
        else:
            prefill_tables.append(seq.block_table)
            prefill_q.append(len(tokens))
            prefill_lens.append(end)
        if score_all:
            scored[id(seq)] = list(range(first_row, len(ids)))
        elif end == seq.num_tokens:
            scored[id(seq)] = [len(ids) - 1]
    meta = build_metadata(slots, decode_tables, decode_lens, prefill_tables, prefill_q, prefill_lens, device)
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.int64, device=device)
    items = [(seq, len(tokens)) for seq, tokens, _ in order]
    return VerifyBatch(as_tensor(ids), as_tensor(positions), meta, items, scored)
