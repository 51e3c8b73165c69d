"""One speculative step: propose for the decoding sequences, verify everything in one target pass, decide.

Used by `LLMEngine` in place of `ModelRunner.execute`; like it, it returns the sequences that got tokens,
but with a list of tokens each (1..k+1 for a decoding sequence, 1 for one that finished its prompt). The
engine then advances `num_computed_tokens` over the accepted drafts and frees the lookahead blocks left unused.
"""

from __future__ import annotations

import time

import torch

from engines.own.model_runner import ModelRunner
from engines.own.sampler import sample
from engines.own.scheduler import ScheduledBatch
from engines.own.sequence import Sequence
from engines.own.speculative.stats import SpecStats
from engines.own.speculative.verifier import target_probs, verify_greedy, verify_sampled
from engines.own.speculative.verify_batch import pack_verify


def is_decoding(seq: Sequence, num_new: int) -> bool:
    """Only the last token pending, after generated ones: the case a proposer extends (not a 1-token prompt,
    nor a 1-token chunk cut by the token budget from a longer recompute)."""
    return num_new == 1 == seq.num_tokens - seq.num_computed_tokens and seq.num_generated > 0


class SpecRunner:
    def __init__(self, runner: ModelRunner, proposer, k: int, max_model_len: int, stats: SpecStats) -> None:
        self.runner, self.proposer, self.k = runner, proposer, k
        self.max_model_len = max_model_len
        self.stats = stats

    def draft_budget(self, seq: Sequence) -> int:
        """Drafts this sequence may take: k, cut so that accepting all of them plus the target's token stays
        within max_tokens, max_model_len and the blocks the scheduler allocated."""
        capacity = len(seq.block_table) * self.runner.block_size - seq.num_tokens
        left = seq.sampling.max_tokens - seq.num_generated - 1
        return max(0, min(self.k, left, self.max_model_len - seq.num_tokens - 1, capacity))

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[Sequence], list[list[int]]]:
        pairs = list(zip(batch.seqs, batch.num_new_tokens))
        decodes = [seq for seq, n in pairs if is_decoding(seq, n)]
        start = self._clock()
        self.runner._zero_new_blocks([(s, 1 + self.draft_budget(s)) for s in decodes])
        proposal = self.proposer.propose(decodes, [self.draft_budget(s) for s in decodes])
        drafted = self._clock()
        drafts = {id(s): t for s, t in zip(decodes, proposal.tokens)}
        fed = [
            (seq, [seq.last_token, *drafts[id(seq)]], True) if id(seq) in drafts
            else (seq, seq.token_ids[seq.num_computed_tokens : seq.num_computed_tokens + n], False)
            for seq, n in pairs
        ]  # fmt: skip
        vb = pack_verify(fed, self.runner.block_size, self.runner.device)
        self.runner._zero_new_blocks(vb.items)
        hidden = self.runner._hidden(vb.input_ids, vb.positions, vb.meta)
        verified = self._clock()
        self.proposer.mirror(vb.input_ids, vb.positions, vb.meta, vb.items)
        mirrored = self._clock()
        out_seqs, out_tokens = self._decide(batch, hidden, vb.scored, decodes, proposal)
        done = self._clock()
        if decodes:
            self.stats.steps += 1
        self.stats.draft_s += (drafted - start) + (mirrored - verified)
        self.stats.verify_s += (verified - drafted) + (done - mirrored)
        return out_seqs, out_tokens

    def _clock(self) -> float:
        """perf_counter after the device finished queued work, so draft and verify time are not mixed up."""
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)
        return time.perf_counter()

    def _decide(self, batch, hidden, scored, decodes, proposal) -> tuple[list[Sequence], list[list[int]]]:
        q_of = {id(s): (t, q) for s, t, q in zip(decodes, proposal.tokens, proposal.probs)}
        seqs = [s for s in batch.seqs if id(s) in scored]
        if not seqs:
            return [], []
        rows = [r for s in seqs for r in scored[id(s)]]
        logits = self.runner.model.logits(hidden[torch.tensor(rows, device=self.runner.device)])
        tokens, offset = [], 0
        for seq in seqs:
            own = logits[offset : offset + len(scored[id(seq)])]
            offset += len(scored[id(seq)])
            if id(seq) not in q_of:  # a prompt just finished: the plain sampler
                tokens.append(sample(own, [seq.sampling], [seq.generator]).tolist())
                continue
            drafts, q = q_of[id(seq)]
            if seq.sampling.temperature == 0:
                kept = verify_greedy(own, drafts)
            else:
                kept = verify_sampled(target_probs(own, [seq.sampling] * len(own)), q, drafts, seq.generator)
            self.stats.record(len(drafts), len(kept) - 1)
            tokens.append(kept)
        return seqs, tokens
