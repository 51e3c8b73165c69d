"""Options of engine=hf."""

from __future__ import annotations

from dataclasses import dataclass

from engines.base import EngineOptions


@dataclass
class HfOptions(EngineOptions):
    name: str = "hf"
    batch_size: int | None = None  # requests per static batch; None = all requests of a call at once
    max_num_batched_tokens: int = 2048  # score(): padded tokens per forward pass
    max_model_len: int | None = None  # longest sequence, prompt + output; None = the model's context

    def __post_init__(self) -> None:
        self.check_positive("batch_size", "max_num_batched_tokens", "max_model_len")
