"""Teacher-forced scoring (lm-eval log-likelihoods): packed prefills that read logits only where asked.

Sequences that differ only in their last token share one forward (engines/context_groups.py). With the
prefix cache on, a context starts from cached KV blocks (a 5-shot prompt's exemplars, written by an earlier
score() call or an earlier batch of this one), and its own full blocks are registered for the next; a
context whose next block another member of the batch is about to write waits one batch, so it hits.
Only the rows a caller needs go through the LM head.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from engines.base import SamplingParams, ScoredSequence, check_tails, now
from engines.context_groups import (
    ContextGroup,
    group_by_context,
    read_tails,
    score_whole,
)
from engines.own.block_manager import block_hashes
from engines.own.llm_engine import LLMEngine
from engines.own.model_runner import ModelRunner
from engines.own.sequence import Sequence
from engines.validation import checked_sequences


def score_sequences(
    llm: LLMEngine, runner: ModelRunner, sequences: Seq[Seq[int]], max_batched_tokens: int
) -> list[ScoredSequence]:
    """Every token's log-probability after the first (Engine.score)."""
    checked = checked_sequences(sequences, llm.config.vocab_size, llm.config.max_model_len)
    return score_whole(checked, lambda seqs, tails: score_tails(llm, runner, seqs, tails, max_batched_tokens))


def score_tails(
    llm: LLMEngine, runner: ModelRunner, sequences: Seq[Seq[int]], tails: Seq[int], max_batched_tokens: int
) -> list[ScoredSequence]:
    """Engine.score_tails: log-probabilities of the last `tails[i]` tokens of each sequence."""
    if llm.has_unfinished():
        raise RuntimeError("score() cannot run while generation requests are in flight")
    checked = checked_sequences(sequences, llm.config.vocab_size, llm.config.max_model_len)
    check_tails(checked, tails)
    bs = llm.config.block_size
    groups = group_by_context(checked, tails)
    # the blocks lookup_prefix may match: never the one holding a row we need logits for
    reusable = [(len(g.context) - g.tail) // bs if llm.config.prefix_cache else 0 for g in groups]
    hashes = [block_hashes(g.context, n, bs) for g, n in zip(groups, reusable)]
    results: dict[int, ScoredSequence] = {}
    pending = list(range(len(groups)))
    while pending:
        batch, seqs, deferred, writing, tokens = [], [], [], set(), 0
        for g in pending:
            seq = Sequence(str(g), groups[g].context, len(groups[g].context), SamplingParams(), now())
            cached = llm.kv.lookup_prefix(seq)[: reusable[g]] if reusable[g] else []
            if len(cached) < reusable[g] and hashes[g][len(cached)] in writing:
                deferred.append(g)  # a batch member writes this context's next block: reuse it next round
                continue
            if seqs and tokens + seq.num_tokens - len(cached) * bs > max_batched_tokens:
                deferred.append(g)
                continue
            if not llm.kv.allocate(seq, seq.num_tokens, cached):
                deferred.append(g)
                continue
            seq.num_computed_tokens = len(cached) * bs
            llm.kv.record_lookup(seq.num_tokens, seq.num_computed_tokens)
            writing.update(hashes[g][len(cached) :])
            batch.append(g)
            seqs.append(seq)
            tokens += seq.num_tokens - seq.num_computed_tokens
        if not batch:
            raise RuntimeError(f"score: the KV pool cannot hold a sequence of {len(groups[pending[0]].context)} tokens")
        try:
            run_batch(llm, runner, [groups[g] for g in batch], seqs, results)
        finally:
            for seq in seqs:
                llm.kv.free(seq)
        pending = deferred
    return [results[i] for i in range(len(checked))]


@torch.inference_mode()
def run_batch(
    llm: LLMEngine, runner: ModelRunner, groups: list[ContextGroup], seqs: list[Sequence],
    results: dict[int, ScoredSequence],
) -> None:  # fmt: skip
    hidden = runner.teacher_forced(seqs, [g.tail for g in groups])
    for group, seq, rows in zip(groups, seqs, hidden):
        seq.num_computed_tokens = seq.num_tokens
        llm.kv.register_computed_blocks(seq)
        logprobs = runner.model.logits(rows).log_softmax(dim=-1)  # one group at a time bounds memory
        results.update(read_tails(group, logprobs))
