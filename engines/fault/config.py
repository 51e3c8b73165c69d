"""Options of engine=fault: how and where it fails."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engines.base import EngineOptions


class Fault(str, enum.Enum):
    none = "none"  # run normally (trivial tokens, real timestamps)
    exception = "exception"  # a Python exception
    segfault = "segfault"  # a real SIGSEGV (a null read)
    oom_kill = "oom_kill"  # SIGKILL, as the kernel's OOM killer sends
    hang = "hang"  # never returns (the cell's timeout ends it)
    exit = "exit"  # the process exits with status 3


class FaultAt(str, enum.Enum):
    init = "init"  # while the engine loads
    generate = "generate"  # in the first generate (or score) call


@dataclass
class FaultOptions(EngineOptions):
    name: str = "fault"
    fault: Fault = Fault.none
    fault_at: FaultAt = FaultAt.generate
    token_delay_s: float = 0.0  # sleep before each token: a slow cell of known length (cluster tests)

    def __post_init__(self) -> None:
        if self.token_delay_s < 0:
            raise ValueError(f"engine.token_delay_s must be >= 0, got {self.token_delay_s}")
