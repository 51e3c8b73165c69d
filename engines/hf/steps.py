"""Per-step bookkeeping inside Hugging Face `generate`, done as a stopping criterion."""

from __future__ import annotations

import time
from typing import Any

import torch

from engines.base import ProgressFn


class StepRecorder:
    """Called by HF once per decoding step with the sequences so far (new token last).

    Records each unfinished row's new token with the step's timestamp and finishes rows that
    reach their own token limit or one of their stop tokens; HF ends the batch once every row
    is finished. Finished rows keep receiving pad tokens from HF, which are not recorded, so
    the recorder changes when the batch ends but never which tokens a row gets. A row's output is
    final when it finishes, so `progress` hears of it then, not when the whole batch ends.
    """

    def __init__(self, limits: list[int], stop_sets: list[frozenset[int]], progress: ProgressFn | None = None):
        self.progress = progress
        self.limits = limits
        self.stop_sets = stop_sets
        self.tokens: list[list[int]] = [[] for _ in limits]
        self.times: list[list[float]] = [[] for _ in limits]
        self.reasons: list[str | None] = [None] * len(limits)
        self.num_finished = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        newest = input_ids[:, -1].tolist()  # host copy: on CUDA this waits until the step's tokens exist
        stamp = time.perf_counter()
        for row, token in enumerate(newest):
            if self.reasons[row] is not None:
                continue
            self.tokens[row].append(token)
            self.times[row].append(stamp)
            if token in self.stop_sets[row]:
                self.reasons[row] = "stop"
            elif len(self.tokens[row]) >= self.limits[row]:
                self.reasons[row] = "length"
        finished = [reason is not None for reason in self.reasons]
        newly = sum(finished) - self.num_finished
        self.num_finished += newly
        if newly and self.progress is not None:
            self.progress(newly)
        return torch.tensor(finished, dtype=torch.bool, device=input_ids.device)
