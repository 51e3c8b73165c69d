"""`infermatrix report RESULTS...` (also `infermatrix-report`): print each results table with speedups, and
with `--out DIR` write DIR/report.md, DIR/report.html and DIR/figures/*.svg with the claims table;
`--wandb` builds a W&B Report of the sweeps' runs (online) or says how to (offline).

    infermatrix report multirun/2026-11-22/03-00-00 --out reports/kv_cache
    infermatrix report reports/*/results.jsonl --out reports/claims --all-claims
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from harness.report import page
from harness.report.bars import plot
from harness.report.claims import check_all, declared_experiments
from harness.report.rows import load_results, load_tables
from harness.report.serving import slo_summary
from harness.report.table import summarize


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="infermatrix report", description="Report on infermatrix results tables.")
    parser.add_argument("results", nargs="+", help="results.jsonl files, or folders holding one (sweep folders, the store)")
    parser.add_argument("--baseline", metavar="CELL", help="printed table: cell to compare against (default: the first ok cell)")
    parser.add_argument("--plots", metavar="DIR", help="also write throughput and latency bar charts (PNG) to DIR")
    parser.add_argument("--goodput-target", type=float, metavar="FRACTION",
                        help="serving sweeps: the goodput fraction a rate must reach to meet the SLOs "
                             "(default: each cell's scenario.slo.target)")  # fmt: skip
    parser.add_argument("--out", metavar="DIR", help="write report.md, report.html and figures/ to DIR")
    parser.add_argument("--title", default="infermatrix report", help="the report's title")
    parser.add_argument("--note", action="append", default=[], metavar="TEXT",
                        help="a paragraph under the title, e.g. the command that measured the results (repeatable)")
    parser.add_argument("--all-claims", action="store_true",
                        help="list the claims of every experiment in conf/experiment/, measured or not")
    parser.add_argument("--wandb", action="store_true", help="build a W&B Report of these sweeps' runs")
    parser.add_argument("--entity", help="W&B entity for --wandb (default: your default entity)")
    parser.add_argument("--project", default="infermatrix", help="W&B project for --wandb")
    return parser.parse_args(argv)


def write_report(args: argparse.Namespace, argv: list[str]) -> list[Path]:
    """The Markdown and HTML report and its figures; returns the files written."""
    rows = load_tables(args.results)
    checks = check_all(rows, declared_experiments(), every=args.all_claims)
    command = "infermatrix report " + " ".join(shlex.quote(a) for a in argv)
    sections = page.build(rows, checks, args.title, command, list(args.results), args.note)
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for old in (out / "figures").glob("*.svg"):  # a figure this build does not draw must not linger
        old.unlink()
    written = []
    for s in sections:
        if s.figure:
            written.append(out / "figures" / f"{s.figure[0]}.svg")
            written[-1].write_text(s.figure[1], encoding="utf-8")
    for name, text in (("report.md", page.markdown(sections)), ("report.html", page.html_page(sections))):
        written.append(out / name)
        written[-1].write_text(text, encoding="utf-8")
    return written


def wandb_report(args: argparse.Namespace, argv: list[str]) -> int:
    from harness.report import wandb_report as wb
    from harness.trackers.mode import choose_mode, has_wandb_credentials

    rows = load_tables(args.results)
    mode, why = choose_mode("auto")
    if mode != "online":
        why = why or ("no W&B credentials" if not has_wandb_credentials() else f"W&B mode is {mode} (WANDB_MODE)")
        print(f"infermatrix report: {why}")
        print(wb.offline_instructions(rows, argv))
        return 0
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        print("infermatrix report: --wandb needs wandb-workspaces (pip install 'infermatrix[wandb-report]')", file=sys.stderr)
        return 2
    checks = check_all(rows, declared_experiments(), every=args.all_claims)
    print(f"W&B report: {wb.publish(wb.build(wr, args.entity, args.project, rows, checks, args.title))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    try:
        for path in args.results:
            df: pd.DataFrame = load_results(path)
            if len(args.results) > 1:
                print(f"\n{path}:")
            print(summarize(df, args.baseline))
            if rates := slo_summary(df, args.goodput_target):
                print(rates)
            if args.plots:
                for written in plot(df, args.plots):
                    print(f"wrote {written}")
        if args.out:
            for written in write_report(args, argv):
                print(f"wrote {written}")
    except (FileNotFoundError, ValueError) as exc:
        print(f"infermatrix report: {exc}", file=sys.stderr)
        return 2
    return wandb_report(args, argv) if args.wandb else 0


if __name__ == "__main__":
    sys.exit(main())
