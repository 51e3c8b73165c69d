"""An experiment: a named sweep (conf/experiment/<name>.yaml) and, as data, the published claims it tests.

A claim says which results-table rows test it and how:
- kind=ratio: `metric` of the `treatment` cells over the `baseline` cells (each a column -> value match),
  paired on the `pair_on` columns; `better` says which way is a gain (lower: baseline / treatment).
- kind=value: `metric` of the treatment cells itself (e.g. an acceptance rate).
- kind=gate: the quality gate (`accuracy.gate`) of the treatment cells against their baseline model.
- kind=best: the value of column `over` whose treatment cell has the best `metric` (e.g. the best draft length).
`low`/`high` is the claimed range (null = open). `not_here` says why a machine like ours cannot measure it
(shown when no cell measured it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ClaimKind(str, enum.Enum):
    ratio = "ratio"
    value = "value"
    gate = "gate"
    best = "best"


class Better(str, enum.Enum):
    higher = "higher"
    lower = "lower"


# Columns two cells must share to be compared (besides what the selectors name): same model and
# precision, same scenario, same workload and lengths, same machine.
PAIR_ON = ["model", "model_dtype", "scenario", "scenario.batch_size", "scenario.num_requests", "workload",
           "workload.input_len", "workload.output_len", "hardware_id"]  # fmt: skip


@dataclass
class ClaimSpec:
    id: str = ""  # the seed-claims id, e.g. kv-1 (../shared/notes/seed-claims.md)
    claim: str = ""
    source: str = ""  # seed file(s) stating it
    kind: ClaimKind = ClaimKind.ratio
    metric: str = "output_throughput_tok_s"  # a results-table column
    better: Better = Better.higher
    treatment: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    over: str | None = None  # kind=best: the column swept
    low: float | None = None  # claimed range (inclusive); null = open
    high: float | None = None
    pair_on: list[str] = field(default_factory=lambda: list(PAIR_ON))
    not_here: str | None = None  # why this machine kind cannot measure it

    def __post_init__(self) -> None:
        self.kind, self.better = ClaimKind(self.kind), Better(self.better)  # plain strings when built in code
        if not self.id or not self.claim:
            raise ValueError(f"a claim needs an id and its text, got id={self.id!r}")
        if self.kind is ClaimKind.ratio and not (self.treatment and self.baseline):
            raise ValueError(f"claim {self.id}: kind=ratio needs treatment and baseline selectors")
        if self.kind is ClaimKind.best and not self.over:
            raise ValueError(f"claim {self.id}: kind=best needs `over` (the column swept)")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"claim {self.id}: low {self.low} > high {self.high}")


@dataclass
class ExperimentConfig:
    name: str = ""  # "" = a plain run or sweep, no experiment
    description: str = ""
    claims: list[ClaimSpec] = field(default_factory=list)
