"""Teacher-forced scoring (for lm-eval style log-likelihoods): batched prefills with all-position logits.

Sequences borrow KV blocks from the engine's pool for one forward pass and give them back; they never
enter the prefix cache, so scoring cannot change what generation computes.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from engines.base import SamplingParams, ScoredSequence, now
from engines.own.llm_engine import LLMEngine
from engines.own.model_runner import ModelRunner
from engines.own.sequence import Sequence
from engines.validation import checked_sequences


def score_sequences(
    llm: LLMEngine, runner: ModelRunner, sequences: Seq[Seq[int]], max_batched_tokens: int
) -> list[ScoredSequence]:
    if llm.has_unfinished():
        raise RuntimeError("score() cannot run while generation requests are in flight")
    config = llm.config
    checked = checked_sequences(sequences, config.vocab_size, config.max_model_len)
    seqs = [Sequence(str(i), s, len(s), SamplingParams(), now()) for i, s in enumerate(checked)]
    results: dict[int, ScoredSequence] = {}
    pending = [i for i, s in enumerate(seqs) if s.num_tokens >= 2]
    for i, s in enumerate(seqs):
        if s.num_tokens < 2:
            results[i] = ScoredSequence([], [])  # nothing to predict
    while pending:
        group, tokens = [], 0
        for i in pending:
            seq = seqs[i]
            if group and tokens + seq.num_tokens > max_batched_tokens:
                break
            if not llm.kv.allocate(seq, seq.num_tokens):
                break
            group.append(i)
            tokens += seq.num_tokens
        if not group:
            raise RuntimeError(f"score: the KV pool cannot hold a sequence of {seqs[pending[0]].num_tokens} tokens")
        try:
            scored = runner.teacher_forced([seqs[i] for i in group])
        finally:
            for i in group:
                llm.kv.free(seqs[i])
        for i, (logprobs, is_greedy) in zip(group, scored):
            results[i] = ScoredSequence(logprobs.tolist(), is_greedy.tolist())
        pending = pending[len(group) :]
    return [results[i] for i in range(len(seqs))]
