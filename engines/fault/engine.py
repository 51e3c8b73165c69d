"""An engine that fails on purpose, in a chosen way and place (`engine=fault engine.fault=segfault`).

It checks what the harness promises: a crash, a kill or a hang in one cell is recorded as that
cell's failure and the sweep goes on. With `fault=none` it runs normally, producing trivial tokens
with real timestamps and loading no model, so a cluster's plumbing can be checked cheaply.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from engines.base import (
    Attention,
    Batching,
    Engine,
    Graphs,
    KVCache,
    ModelSpec,
    ProgressFn,
    Request,
    RequestOutput,
    ScoredSequence,
    Technique,
    now,
)
from engines.fault.config import Fault, FaultAt, FaultOptions
from engines.validation import reject_bad, request_error


def trigger(fault: Fault) -> None:
    if fault is Fault.exception:
        raise RuntimeError("fault engine: injected exception")
    if fault is Fault.segfault:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif fault is Fault.oom_kill:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault is Fault.hang:
        while True:
            time.sleep(3600)
    elif fault is Fault.exit:
        os._exit(3)


class FaultEngine(Engine):
    name: ClassVar[str] = "fault"
    supports: ClassVar[dict[str, tuple[Any, ...]]] = {
        "kv_cache": (KVCache.none,), "batching": (Batching.static,), "chunked_prefill": (False,),
        "prefix_cache": (False,), "attention": (Attention.torch,), "graphs": (Graphs.eager,),
    }  # fmt: skip
    defaults: ClassVar[dict[str, Any]] = {
        "kv_cache": KVCache.none, "batching": Batching.static, "chunked_prefill": False,
        "prefix_cache": False, "attention": Attention.torch, "graphs": Graphs.eager,
    }  # fmt: skip

    def __init__(self, model: ModelSpec, technique: Technique, options: FaultOptions, device: str) -> None:
        self.fault = Fault(options.fault)
        self.token_delay_s = options.token_delay_s
        self.vocab_size = int((model.random_config or {}).get("vocab_size", 1 << 31))
        if FaultAt(options.fault_at) is FaultAt.init:
            trigger(self.fault)

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[RequestOutput]:
        trigger(self.fault)
        arrival = now()
        outputs = reject_bad(requests, arrival, lambda r: request_error(r, self.vocab_size, None))
        for index, request in enumerate(requests):
            if outputs[index] is None:
                times = [self.next_token_time() for _ in range(request.sampling.max_tokens)]
                outputs[index] = RequestOutput(request.request_id, len(request.prompt_token_ids), [0] * len(times),
                                               times, arrival, "length")  # fmt: skip
            if progress:
                progress(1)
        return outputs  # type: ignore[return-value]

    def next_token_time(self) -> float:
        if self.token_delay_s:
            time.sleep(self.token_delay_s)
        return now()

    def score(self, sequences: Sequence[Sequence[int]]) -> list[ScoredSequence]:
        trigger(self.fault)
        return [ScoredSequence([0.0] * (len(s) - 1), [True] * (len(s) - 1)) for s in sequences]

    def stats(self) -> dict[str, Any]:
        return {"fault": self.fault.value}

    @property
    def eos_token_id(self) -> int | None:
        return None
