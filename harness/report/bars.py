"""`--plots DIR`: bar charts of one table's ok cells (output tok/s with its interval, latencies) as PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from harness.report.rows import interval as _interval
from harness.report.rows import number as _number
from harness.report.rows import rows as _rows
from harness.report.table import LATENCIES, THROUGHPUT

def plot(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Bar charts of the ok cells: output tok/s with 95% CI error bars, and latencies.
    Needs matplotlib (the `plots` extra); without it, says so and writes nothing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("infermatrix-report: matplotlib is not installed, so no plots (pip install 'infermatrix[plots]')",
              file=sys.stderr)  # fmt: skip
        return []
    rows = [row for row in _rows(df) if row.get("status") == "ok"] if not df.empty else []
    if not rows:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = [str(row.get("cell")) for row in rows]
    height = 1.2 + 0.4 * len(rows)

    fig = Figure(figsize=(9, height), layout="constrained")
    ax = fig.add_subplot()
    values = [_number(row, THROUGHPUT) or 0.0 for row in rows]
    errors = [[0.0, 0.0] if (ci := _interval(row, THROUGHPUT)) is None else [v - ci[0], ci[1] - v]
              for row, v in zip(rows, values)]  # fmt: skip
    ax.barh(cells, values, xerr=list(zip(*errors)), capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("output tokens/s (95% CI)")
    paths = [out_dir / "throughput.png"]
    fig.savefig(paths[0], dpi=120)

    present = [(header, column) for header, column in LATENCIES if any(_number(r, column) is not None for r in rows)]
    if present:
        fig = Figure(figsize=(9, height * len(present)), layout="constrained")
        for i, (header, column) in enumerate(present, start=1):
            ax = fig.add_subplot(len(present), 1, i)
            ax.barh(cells, [_number(row, column) or 0.0 for row in rows])
            ax.invert_yaxis()
            ax.set_xlabel(header)
        paths.append(out_dir / "latency.png")
        fig.savefig(paths[-1], dpi=120)
    return paths
