"""Hydra callbacks: after a sweep, print every cell side by side with speedups (and, for a serving
rate sweep, the goodput per rate and the highest rate meeting the SLOs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


FAILED_CELLS: list[str] = []  # cells of the finished sweep that failed; cli.main turns them into exit status 1


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.record import TABLE_NAME
        from harness.report import load_results, slo_summary, summarize

        table = Path(config.hydra.sweep.dir) / TABLE_NAME
        if table.is_file():
            df = load_results(table)
            print(f"\nSweep summary ({table}):")
            print(summarize(df))
            if rates := slo_summary(df):  # a serving rate sweep: the highest rate meeting the SLOs
                print(rates)
            FAILED_CELLS[:] = [str(c) for c in df.loc[df["status"] == "failed", "cell"]]
