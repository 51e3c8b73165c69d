"""Which sequences run in the next step, and how many new tokens each.

Every scheduled sequence advances its `num_computed_tokens` by its share of the token budget: a decode
is 1 token, a prefill (or a chunk of it) is many, so mixed prefill+decode steps need no special case.
Running sequences go first (decodes before new prompts); when blocks run out, the most recently admitted
sequence is preempted: its blocks are freed and it is recomputed later (its tokens are kept).

Batching policies: `continuous` admits waiting requests every step; `static` admits a fixed batch only
once the previous batch has fully finished. KV mode `none` frees all KV after every step, so each step
recomputes whole sequences.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engines.own.block_manager import block_hashes
from engines.own.sequence import Sequence, Status


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool
    static_batching: bool
    static_batch_size: int | None  # static: requests per batch (None = max_num_seqs)
    recompute_every_step: bool  # kv_cache == none
    lookahead_slots: int = 0  # speculative decoding: extra slots a decoding sequence gets for its drafts


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv) -> None:
        self.config = config
        self.kv = kv  # BlockManager or ContiguousAllocator
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.batch_members: set[int] = set()  # static batching: ids of the current batch's sequences
        self.total_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort_all(self) -> list[Sequence]:
        """Drop every waiting and running sequence, freeing its KV; returns them."""
        dropped = [*self.running, *self.waiting]
        for seq in dropped:
            self.kv.free(seq)  # a no-op for a sequence that holds no blocks
        self.running, self.waiting = [], deque()
        self.batch_members.clear()
        return dropped

    def _num_new_tokens(self, seq: Sequence, budget: int, step_is_empty: bool) -> int:
        remaining = seq.num_tokens - seq.num_computed_tokens
        if remaining <= budget:
            return remaining
        if self.config.chunked_prefill and not self.config.recompute_every_step:
            return budget
        return remaining if step_is_empty else 0  # an unchunked prompt over budget runs alone

    def _lookahead(self, seq: Sequence, num_new: int) -> int:
        """Speculative slots for a decoding sequence's drafts (they count against the token budget too)."""
        decoding = num_new == 1 == seq.num_tokens - seq.num_computed_tokens and seq.num_generated > 0
        return self.config.lookahead_slots if decoding else 0

    def _allocate(self, seq: Sequence, num_tokens: int, extra: int) -> bool:
        """Blocks for `num_tokens`, plus `extra` lookahead slots when they fit."""
        return bool(extra) and self.kv.allocate(seq, num_tokens + extra) or self.kv.allocate(seq, num_tokens)

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.total_preemptions += 1
        self.waiting.appendleft(seq)

    def _may_admit(self, seq: Sequence) -> bool:
        if not self.config.static_batching:
            return True
        if not self.batch_members:  # previous batch done: the next one is the first N waiting requests
            size = self.config.static_batch_size or self.config.max_num_seqs
            self.batch_members = {id(s) for s in list(self.waiting)[:size]}
        return id(seq) in self.batch_members

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = self._num_new_tokens(seq, budget, not batch.seqs)
            if num_new == 0:
                i += 1
                continue
            extra = self._lookahead(seq, num_new)
            while not self._allocate(seq, seq.num_computed_tokens + num_new, extra):
                victim = self.running.pop()
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    break
            if seq.status is Status.WAITING:  # preempted itself: nothing later in `running` remains
                break
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new + extra
            i += 1
        if batch.num_preempted == 0:
            self._admit_waiting(batch, budget)
        return batch

    def _prompt_block_hashes(self, seq: Sequence) -> list[int]:
        """Hashes of the prompt blocks the prefix cache can serve (never the one holding the last token)."""
        return block_hashes(seq.token_ids, (seq.prompt_len - 1) // self.kv.block_size, self.kv.block_size)

    def _blocks_being_written(self) -> set[int]:
        """Prefix-cache hashes of prompt blocks that running prefills will write but have not registered."""
        writing: set[int] = set()
        for seq in self.running:
            if seq.num_computed_tokens < seq.prompt_len:
                writing.update(self._prompt_block_hashes(seq)[len(seq.block_hashes) :])
        return writing

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        # A prompt whose next uncached block a running prefill is writing waits for it, then reuses it:
        # 16 requests sharing a 400-token system prompt compute it once, not once per request in the step.
        if not self.waiting:  # most decode steps: no hashing
            return
        shares = getattr(self.kv, "prefix_cache", False)
        writing = self._blocks_being_written() if shares else set()
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self._may_admit(seq):
                break
            cached = self.kv.lookup_prefix(seq)
            wanted = self._prompt_block_hashes(seq) if shares else []
            if len(cached) < len(wanted) and wanted[len(cached)] in writing:
                break
            hit_tokens = len(cached) * self.kv.block_size
            seq.num_computed_tokens = hit_tokens
            num_new = self._num_new_tokens(seq, budget, not batch.seqs)
            if num_new == 0 or not self.kv.allocate(seq, hit_tokens + num_new, cached):
                seq.num_computed_tokens = 0
                break
            self.kv.record_lookup(seq.num_tokens, hit_tokens)
            seq.prefix_hit_tokens += hit_tokens
            writing.update(wanted[len(cached) :])
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new

    def finish_step(self, batch: ScheduledBatch) -> None:
        """After postprocessing: drop finished sequences; in KV mode none, forget all computed KV."""
        for seq in batch.seqs:
            if seq.status is Status.FINISHED:
                self.kv.free(seq)
                self.batch_members.discard(id(seq))
            elif self.config.recompute_every_step:
                self.kv.free(seq)
                seq.num_computed_tokens = 0
        self.running = [s for s in self.running if s.status is not Status.FINISHED]
