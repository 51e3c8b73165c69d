"""Reports from results tables: the printed tables (table.py, serving.py), `--plots` bar charts (bars.py), and
`infermatrix report`: a Markdown and an HTML page with figures and the claims table (cli.py)."""

from harness.report.bars import plot
from harness.report.cli import main
from harness.report.rows import load_results, load_tables
from harness.report.serving import _without_rate, slo_rates, slo_summary
from harness.report.table import pick_baseline, speedups, stability_notes, summarize

__all__ = ["load_results", "main", "load_tables", "pick_baseline", "plot", "slo_rates", "slo_summary", "speedups",
           "stability_notes", "summarize"]
