"""The engine loop: `add_request`, then `step()` = schedule -> run model -> postprocess, until done.

`generate` is the offline (LLM-style) entry over token-id prompts; `serve` the online one (engines/own/online.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass
from typing import Any

import torch

from engines.base import Request, RequestOutput, SamplingParams, now
from engines.own.block_manager import BlockManager
from engines.own.contiguous_allocator import ContiguousAllocator
from engines.own.model_runner import ModelRunner
from engines.own.online import ServeCounters, serve
from engines.own.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from engines.own.sequence import Sequence, Status
from engines.own.speculative.runner import SpecRunner
from engines.validation import output_id, prompt_len, request_error


@dataclass(slots=True)
class CoreConfig:
    kv_cache: str  # paged | contiguous | none
    prefix_cache: bool
    scheduler: SchedulerConfig
    block_size: int
    num_blocks: int
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    kv_bytes_per_token: int


@dataclass(slots=True)
class StepCounters:
    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    generated_tokens: int = 0
    peak_used_blocks: int = 0
    peak_running: int = 0
    allocated_block_steps: int = 0  # sum over steps of blocks held: time-weighted KV allocation
    real_token_steps: int = 0  # sum over steps of tokens with KV: time-weighted useful KV
    prefill_steps: int = 0  # steps that carried prompt tokens (with or without decodes beside them)
    prefill_step_s: float = 0.0  # wall time of those steps, schedule to sampled tokens
    decode_step_s: float = 0.0  # wall time of the steps that only decoded


class LLMEngine:
    def __init__(self, runner: ModelRunner, config: CoreConfig, speculator: SpecRunner | None = None) -> None:
        self.runner = runner
        self.speculator = speculator  # speculative decoding: runs each step in place of runner.execute
        self.config = config
        if config.kv_cache == "contiguous":
            self.kv = ContiguousAllocator(config.num_blocks, config.block_size, config.max_model_len)
        else:
            self.kv = BlockManager(config.num_blocks, config.block_size, config.prefix_cache)
        self.scheduler = Scheduler(config.scheduler, self.kv)
        self.counters = StepCounters()
        self.serve_counters = ServeCounters()
        self.rejected: list[Sequence] = []
        # contiguous regions cap what one sequence may hold; paged may use the whole pool
        region = self.kv.blocks_needed(1) if config.kv_cache == "contiguous" else config.num_blocks
        self.max_kv_tokens = region * config.block_size

    def add_request(self, request: Request) -> Sequence:
        """Queue one request. A bad one comes back already finished with its error (the next step reports it)."""
        return self.enqueue(request, self.request_error(request), 0)

    def request_error(self, request: Any) -> str | None:
        return request_error(request, self.config.vocab_size, self.config.max_model_len, self.max_kv_tokens)

    def enqueue(self, request: Any, error: str | None, index: int) -> Sequence:
        """Queue a request already checked (`error` from `request_error`); `index` names one without an id."""
        if error is not None:
            seq = Sequence(output_id(request, index), [], prompt_len(request), SamplingParams(), now())
            seq.finish("error", error)
            self.rejected.append(seq)
            return seq
        prompt = [int(t) for t in request.prompt_token_ids]
        seq = Sequence(request.request_id, prompt, len(prompt), request.sampling, now())
        if seq.sampling.seed is not None and seq.sampling.temperature > 0:
            seq.generator = torch.Generator(device=self.runner.device).manual_seed(int(seq.sampling.seed))
        self.scheduler.add(seq)
        return seq

    def abort_all(self, reason: str) -> None:
        """Finish every queued or running sequence with `reason` as its error and free its KV."""
        for seq in self.scheduler.abort_all():
            seq.finish("error", reason)
        self.rejected = []

    def is_idle(self) -> bool:
        """No sequence queued or running and no KV block held (prefix-cache blocks count as free)."""
        return not self.has_unfinished() and self.kv.num_used_blocks == 0

    def has_unfinished(self) -> bool:
        return bool(self.rejected) or self.scheduler.has_unfinished()

    def step(self) -> list[Sequence]:
        """One engine iteration; returns the sequences that finished in it."""
        finished, self.rejected = self.rejected, []
        start = now()
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return finished + self._fail_unschedulable()
        with_prompt_tokens = self._count(batch)
        sampled, new_tokens = self._run(batch)
        stamp = now()  # the sampled ids are on the host now: tokens of one step are one event
        if with_prompt_tokens:
            self.counters.prefill_steps += 1
            self.counters.prefill_step_s += stamp - start
        else:
            self.counters.decode_step_s += stamp - start
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
        for seq, tokens in zip(sampled, new_tokens):
            seq.num_computed_tokens += len(tokens) - 1  # accepted drafts: their KV was written when verified
            for token in tokens:
                seq.token_ids.append(token)
                seq.token_times.append(stamp)
                self.counters.generated_tokens += 1
                reason = self._finish_reason(seq, token)
                if reason is not None:
                    seq.finish(reason)
                    finished.append(seq)
                    break
            if self.speculator is not None and seq.status is not Status.FINISHED:
                self.kv.release_tail(seq)  # lookahead blocks of rejected drafts
        for seq in batch.seqs:
            self.kv.register_computed_blocks(seq)
        self.scheduler.finish_step(batch)
        return finished

    def _run(self, batch: ScheduledBatch) -> tuple[list[Sequence], list[list[int]]]:
        """The model step: the sequences that got new tokens, and those tokens (several with speculation)."""
        if self.speculator is not None:
            return self.speculator.execute(batch)
        sampled, token_ids = self.runner.execute(batch)
        return sampled, [[token] for token in token_ids]

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.sampling
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.config.eos_token_ids):
            return "stop"
        if seq.num_generated >= params.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return "length"
        return None

    def _fail_unschedulable(self) -> list[Sequence]:
        # Nothing ran although work is waiting: the head request can never get its blocks.
        if self.scheduler.running or not self.scheduler.waiting:
            return []
        seq = self.scheduler.waiting.popleft()
        seq.finish("error", f"not enough KV blocks for {seq.num_tokens} tokens (pool: {self.kv.num_blocks} blocks)")
        return [seq]

    def _count(self, batch: ScheduledBatch) -> bool:
        """Count the step's tokens and KV use; whether it carries prompt tokens."""
        c = self.counters
        c.steps += 1
        prefill_before = c.prefill_tokens
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            if num_new == 1:
                c.decode_tokens += 1
            else:
                c.prefill_tokens += num_new
        c.peak_used_blocks = max(c.peak_used_blocks, self.kv.num_used_blocks)
        c.peak_running = max(c.peak_running, len(self.scheduler.running))
        c.allocated_block_steps += self.kv.num_used_blocks
        c.real_token_steps += sum(s.num_computed_tokens + n for s, n in zip(batch.seqs, batch.num_new_tokens))
        return c.prefill_tokens > prefill_before

    def generate(
        self,
        requests: Seq[Request],
        progress: Callable[[int], None] | None = None,
    ) -> list[RequestOutput]:
        """Run `requests` to completion; outputs in request order. Every request is checked before any is
        queued, and a call that fails part way leaves the engine idle, so nothing leaks into the next call."""
        errors = [self.request_error(r) for r in requests]
        try:
            seqs = [self.enqueue(r, error, i) for i, (r, error) in enumerate(zip(requests, errors))]
            while self.has_unfinished():
                done = self.step()
                if progress is not None and done:
                    progress(len(done))
        except BaseException as exc:
            self.abort_all(f"aborted: generate() failed with {type(exc).__name__}")
            raise
        return [s.output() for s in seqs]

    def serve(
        self,
        requests: Seq[Request],
        offsets_s: Seq[float],
        max_concurrency: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[RequestOutput]:
        """Online serving: requests join as they come due (engines/own/online.py)."""
        return serve(self, requests, offsets_s, max_concurrency, progress)

    def generate_tokens(
        self, prompts: list[list[int]], sampling: SamplingParams | list[SamplingParams]
    ) -> list[RequestOutput]:
        """LLM-style offline entry: token-id prompts with one or per-prompt sampling parameters."""
        params = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        requests = [Request(str(i), list(p), s) for i, (p, s) in enumerate(zip(prompts, params))]
        return self.generate(requests)

    def stats(self) -> dict:
        c = self.counters
        block_bytes = self.config.kv_bytes_per_token * self.config.block_size
        allocated = c.allocated_block_steps * self.config.block_size
        return {
            "steps": c.steps,
            "prefill_tokens": c.prefill_tokens,
            "decode_tokens": c.decode_tokens,
            "prefill_steps": c.prefill_steps,  # where the time went: steps with prompt tokens vs decode-only
            "prefill_step_seconds": c.prefill_step_s,
            "decode_step_seconds": c.decode_step_s,
            "generated_tokens": c.generated_tokens,
            "preemptions": self.scheduler.total_preemptions,
            "peak_running_seqs": c.peak_running,
            "kv_blocks_total": self.kv.num_blocks,
            "kv_blocks_used": self.kv.num_used_blocks,
            "kv_blocks_free": self.kv.num_free_blocks,
            "kv_bytes_pool": self.kv.num_blocks * block_bytes,
            "kv_bytes_peak_allocated": c.peak_used_blocks * block_bytes,
            "kv_waste_pct": 100.0 * (1 - c.real_token_steps / allocated) if allocated else 0.0,
            "prefix_cache_hit_rate": self.kv.hit_rate(),
            "prefix_cache_hit_tokens": self.kv.hits,
            "prefix_cache_lookup_tokens": self.kv.lookups,
            **({"speculation": self.speculator.stats.as_dict()} if self.speculator is not None else {}),
            **self.serve_counters.stats(),
        }
