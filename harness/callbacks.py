"""Hydra callbacks: after a sweep, print every cell side by side with speedups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


FAILED_CELLS: list[str] = []  # cells of the finished sweep that failed; cli.main turns them into exit status 1


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.record import TABLE_NAME
        from harness.report import load_results, summarize

        table = Path(config.hydra.sweep.dir) / TABLE_NAME
        if table.is_file():
            df = load_results(table)
            print(f"\nSweep summary ({table}):")
            print(summarize(df))
            FAILED_CELLS[:] = [str(c) for c in df.loc[df["status"] == "failed", "cell"]]
