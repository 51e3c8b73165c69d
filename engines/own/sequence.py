"""Per-request state. One counter, `num_computed_tokens`, says how many of `token_ids` have KV in the cache:
prefill chunks, prefix-cache hits, decode steps and preemption (reset to 0) all just move it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from engines.base import RequestOutput, SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]
    prompt_len: int
    sampling: SamplingParams
    arrival_time: float
    generator: torch.Generator | None = None  # per-request RNG when sampling.seed is set
    status: Status = Status.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chain hashes of blocks registered for prefix reuse
    prefix_hit_tokens: int = 0
    num_preemptions: int = 0
    token_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    def finish(self, reason: str, error: str | None = None) -> None:
        self.status, self.finish_reason, self.error = Status.FINISHED, reason, error

    def output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt_len=self.prompt_len,
            token_ids=self.token_ids[self.prompt_len :],
            token_times=list(self.token_times),
            arrival_time=self.arrival_time,
            finish_reason=self.finish_reason or "error",
            error=self.error,
        )
