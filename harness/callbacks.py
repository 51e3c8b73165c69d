"""Hydra callbacks: after a sweep, print every cell side by side with speedups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.record import TABLE_NAME
        from harness.report import load_results, summarize

        table = Path(config.hydra.sweep.dir) / TABLE_NAME
        if table.is_file():
            print(f"\nSweep summary ({table}):")
            print(summarize(load_results(table)))
