"""Turn a scheduled batch into packed tensors, run the model once, and sample.

Packing order: decodes (one new token) first, then prefills, as `AttnMetadata` expects. Only rows whose
sequence reaches its last token this step go through the LM head and the sampler.
"""

from __future__ import annotations

import torch

from engines.own.attn_metadata import AttnMetadata, build_metadata
from engines.own.kv_pool import zero_blocks
from engines.own.model import CausalLM
from engines.own.sampler import sample
from engines.own.scheduler import ScheduledBatch
from engines.own.sequence import Sequence

def slot_of(seq: Sequence, position: int, block_size: int) -> int:
    return seq.block_table[position // block_size] * block_size + position % block_size


class ModelRunner:
    def __init__(self, model: CausalLM, block_size: int, device: torch.device) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        self.decode_hook = None  # optional graph runner: (input_ids, positions, meta) -> hidden, or None
        # Blocks never written hold uninitialised memory (NaN possible); attention masks their unused
        # tail, but 0 * NaN is NaN, so each block is zeroed once, the first time it is written.
        num_blocks = model.kv_caches[0][0].shape[0] if model.kv_caches else 0
        self.block_written = [False] * num_blocks

    def _zero_new_blocks(self, items: list[tuple[Sequence, int]]) -> None:
        fresh = []
        for seq, num_new in items:
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            for block in seq.block_table[start // self.block_size : (end - 1) // self.block_size + 1]:
                if not self.block_written[block]:
                    self.block_written[block] = True
                    fresh.append(block)
        if fresh:
            zero_blocks(self.model.kv_caches, torch.tensor(fresh, device=self.device))

    def _pack(self, items: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, torch.Tensor, AttnMetadata, list[int]]:
        """Tensors for `(seq, num_new)` pairs (decodes first) and the packed row of each sampling sequence."""
        bs = self.block_size
        ids, positions, slots = [], [], []
        decode_tables, decode_lens, prefill_tables, prefill_q, prefill_lens = [], [], [], [], []
        sample_rows = []
        for seq, num_new in items:
            start = seq.num_computed_tokens
            end = start + num_new
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(slot_of(seq, p, bs) for p in range(start, end))
            if num_new == 1:
                decode_tables.append(seq.block_table)
                decode_lens.append(end)
            else:
                prefill_tables.append(seq.block_table)
                prefill_q.append(num_new)
                prefill_lens.append(end)
            if end == seq.num_tokens:
                sample_rows.append(len(ids) - 1)
        meta = build_metadata(slots, decode_tables, decode_lens, prefill_tables, prefill_q, prefill_lens, self.device)
        as_tensor = lambda xs: torch.tensor(xs, dtype=torch.int64, device=self.device)  # noqa: E731
        return as_tensor(ids), as_tensor(positions), meta, sample_rows

    def _hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata) -> torch.Tensor:
        if self.decode_hook is not None and meta.num_prefill_tokens == 0:
            hidden = self.decode_hook(input_ids, positions, meta)
            if hidden is not None:
                return hidden
        meta.backend_state = self.model.attention.prepare(meta, self.block_size)
        return self.model.forward_prepared(input_ids, positions, meta)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[Sequence], list[int]]:
        """Run one step; returns the sequences that got a new token and those tokens (host ints)."""
        pairs = list(zip(batch.seqs, batch.num_new_tokens))
        items = [p for p in pairs if p[1] == 1] + [p for p in pairs if p[1] != 1]
        self._zero_new_blocks(items)
        input_ids, positions, meta, sample_rows = self._pack(items)
        hidden = self._hidden(input_ids, positions, meta)
        sampling = [seq for seq, num_new in items if seq.num_computed_tokens + num_new == seq.num_tokens]
        if not sampling:
            return [], []
        logits = self.model.logits(hidden[torch.tensor(sample_rows, device=self.device)])
        params, generators = [s.sampling for s in sampling], [s.generator for s in sampling]
        ids = sample(logits, params, generators, self.model.ops.argmax_rows)
        return sampling, ids.tolist()

    @torch.inference_mode()
    def teacher_forced(self, seqs: list[Sequence], tails: list[int]) -> list[torch.Tensor]:
        """Prefill each sequence from its `num_computed_tokens` (earlier KV cached) to its end (blocks already
        allocated); per sequence, the final hidden rows of its last `tail` tokens (tail <= uncomputed tokens)."""
        items = [(s, s.num_tokens - s.num_computed_tokens) for s in seqs]
        order = [i for i, (_, n) in enumerate(items) if n == 1] + [i for i, (_, n) in enumerate(items) if n != 1]
        packed = [items[i] for i in order]  # decodes first, as _pack expects
        self._zero_new_blocks(packed)
        input_ids, positions, meta, _ = self._pack(packed)
        hidden = self._hidden(input_ids, positions, meta)
        rows: list[torch.Tensor] = [hidden] * len(seqs)
        end = 0
        for i, (_, num_new) in zip(order, packed):
            end += num_new
            rows[i] = hidden[end - tails[i] : end]
        return rows
