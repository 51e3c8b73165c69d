"""Read a results table and show what each technique bought: a fixed-width table with speedups
against a baseline cell, and optional bar charts.

    infermatrix-report multirun/2026-11-22/03-00-00 --baseline hf/smollm2-135m/latency/kv_cache=none --plots plots/
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.metrics import HEADLINE, NOISY_CV, WIDE_BELOW_N
from engines.environment import code_version
from harness.record import TABLE_NAME, flatten, read_rows

THROUGHPUT = "output_throughput_tok_s"
E2E_MEAN = "e2el_ms.mean"
# (header, results-table column) of the latency columns, in the order a request lives them.
LATENCIES = (("TTFT p50 ms", "ttft_ms.p50"), ("TPOT mean ms", "tpot_ms.mean"),
             ("ITL p50 ms", "itl_ms.p50"), ("E2E p50 ms", "e2el_ms.p50"))  # fmt: skip
SHORT_NAMES = {"output_throughput_tok_s": "out tok/s", "ttft_ms.mean": "TTFT", "tpot_ms.mean": "TPOT",
               "e2el_ms.mean": "E2E"}  # fmt: skip


def load_results(path_or_dir: str | Path) -> pd.DataFrame:
    """The rows of a results.jsonl (or of the one inside a folder), in the order they were written."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / TABLE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results table at {path}")
    return pd.DataFrame(list(read_rows(path)))


def _rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The table's rows with nested values flattened: an interval block `ci95.<figure>` = {low, high,
    ...} becomes `ci95.<figure>.low`, ..., whether or not the row was flattened when written."""
    return [flatten(row) for row in df.to_dict("records")]


def _number(row: dict[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None or isinstance(value, (list, str)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _interval(row: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """A metric's 95% CI: `ci95.<metric>.low`/`.high` columns, or the [lo, hi] pair of older tables."""
    pair = row.get(f"ci95.{metric}")
    if isinstance(pair, (list, tuple)) and len(pair) == 2 and None not in pair:
        return float(pair[0]), float(pair[1])
    low, high = _number(row, f"ci95.{metric}.low"), _number(row, f"ci95.{metric}.high")
    return (low, high) if low is not None and high is not None else None


def _max_cv(row: dict[str, Any]) -> float | None:
    """The largest coefficient of variation over repeats among the headline figures."""
    cvs = [cv for key in HEADLINE if (cv := _number(row, f"ci95.{key}.cv")) is not None]
    return max(cvs) if cvs else None


def _cv_text(row: dict[str, Any]) -> str:
    cv = _max_cv(row)
    return "-" if cv is None else f"{cv:.1%}" + ("!" if cv > NOISY_CV else "")


def stability_notes(row: dict[str, Any]) -> list[str]:
    """Warnings about an ok cell's intervals: too few repeats, or repeats spread more than NOISY_CV."""
    notes = []
    n = _number(row, f"ci95.{HEADLINE[0]}.n")
    if n is not None and n < WIDE_BELOW_N:
        notes.append("1 repeat: no CI" if n < 2 else f"wide CI: {n:.0f} repeats")
    noisy = [f"{SHORT_NAMES[key]} {cv:.1%}" for key in HEADLINE
             if (cv := _number(row, f"ci95.{key}.cv")) is not None and cv > NOISY_CV]  # fmt: skip
    if noisy:
        notes.append(f"noisy, CV > {NOISY_CV:.0%}: " + ", ".join(noisy))
    return notes


def pick_baseline(rows: list[dict[str, Any]], baseline: str | None = None) -> int | None:
    """Position of the named cell's first ok row, or of the first ok row; None if no cell is ok."""
    ok = [i for i, row in enumerate(rows) if row.get("status") == "ok"]
    if baseline is None:
        return ok[0] if ok else None
    for i in ok:
        if rows[i].get("cell") == baseline:
            return i
    names = ", ".join(dict.fromkeys(str(rows[i].get("cell")) for i in ok)) or "none"
    raise ValueError(f"baseline '{baseline}' is not an ok cell of this table; ok cells: {names}")


def speedups(row: dict[str, Any], base: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(output tok/s ÷ the baseline's, the baseline's mean E2E latency ÷ this cell's): > 1 is better."""
    if base is None or row.get("status") != "ok":
        return None, None
    tput, base_tput = _number(row, THROUGHPUT), _number(base, THROUGHPUT)
    e2e, base_e2e = _number(row, E2E_MEAN), _number(base, E2E_MEAN)
    tput_ratio = tput / base_tput if tput is not None and base_tput else None
    e2e_ratio = base_e2e / e2e if base_e2e is not None and e2e else None
    return tput_ratio, e2e_ratio


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _throughput_text(row: dict[str, Any]) -> str:
    value, ci = _number(row, THROUGHPUT), _interval(row, THROUGHPUT)
    if value is None:
        return "-"
    return f"{value:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{value:.1f}"


def _note(row: dict[str, Any], is_baseline: bool, code: str | None) -> str:
    if row.get("status") != "ok":
        reason = row.get("reason")
        return str(reason).strip().splitlines()[0] if isinstance(reason, str) and reason.strip() else "(no reason)"
    notes = ["baseline"] if is_baseline else []
    if row.get("reused") is True:
        notes.append("reused earlier result")
    if code is not None and row.get("code_version") != code:
        notes.append(f"stale: measured by code {row.get('code_version') or 'unknown'}")
    return "; ".join(notes + stability_notes(row))


def summarize(df: pd.DataFrame, baseline: str | None = None, code: str | None = None) -> str:
    """One fixed-width line per cell: status, latencies, output tok/s with its 95% CI, the largest CV
    over repeats ('!' above 5%), peak memory, and speedups against the baseline cell; failed and
    skipped cells show their reason, ok cells warnings about their intervals and, when measured by
    another code version than `code` (default: this checkout's), that they are stale."""
    if df.empty:
        return "(no cells)"
    code = code or code_version()
    rows = _rows(df)
    base_at = pick_baseline(rows, baseline) if len(rows) > 1 else None  # one cell: nothing to compare
    base = None if base_at is None else rows[base_at]
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("cell", lambda r: str(r.get("cell"))),
        ("status", lambda r: str(r.get("status"))),
        *[(header, lambda r, c=column: _fmt(_number(r, c))) for header, column in LATENCIES],
        ("out tok/s [95% CI]", _throughput_text),
        *(
            [("goodput req/s", lambda r: _fmt(_number(r, "goodput_req_s"), ".2f")),
             ("good %", lambda r: _fmt(None if (f := _number(r, "goodput_fraction")) is None else 100 * f, ".0f"))]
            if any(_number(row, "goodput_fraction") is not None for row in rows) else []
        ),  # fmt: skip
        # speculative cells: accepted / proposed drafts, and 1 + accepted per draft (the bonus token counted)
        *(
            [("accept", lambda r: _fmt(_number(r, "spec.acceptance_rate"), ".2f")),
             ("acc.len", lambda r: _fmt(_number(r, "spec.mean_accepted_length"), ".2f"))]
            if any(_number(row, "spec.acceptance_rate") is not None for row in rows) else []
        ),  # fmt: skip
        ("CV", _cv_text),
        ("peak MB", lambda r: _fmt(None if (b := _number(r, "peak_memory_bytes")) is None else b / 1e6)),
        ("load", lambda r: _fmt(_number(r, "load_avg_1m"), ".1f")),
        *(
            [("tok/s x", lambda r: _fmt(speedups(r, base)[0], ".2f", "x")),
             ("E2E x", lambda r: _fmt(speedups(r, base)[1], ".2f", "x"))]
            if len(rows) > 1 else []
        ),  # fmt: skip
        ("note", lambda r: _note(r, r is base, code)),  # rows are distinct dicts: `is` marks one row
    ]
    table = [[header for header, _ in columns]] + [[text(row) for _, text in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    left = {0, 1, len(columns) - 1}  # text columns; numbers align right

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(table[0]).rstrip(), "  ".join("-" * w for w in widths)]
    out += [line(cells).rstrip() for cells in table[1:]]
    if base is not None:
        out.append(f"speedups vs baseline {base.get('cell')}: tok/s x = output tok/s / baseline's; "
                   "E2E x = baseline's mean E2E latency / this cell's (> 1 is faster)")  # fmt: skip
    elif len(rows) > 1:
        out.append("no ok cell: no speedups")
    if any((cv := _max_cv(row)) is not None and cv > NOISY_CV for row in rows if row.get("status") == "ok"):
        out.append(f"CV = std / mean over repeats, largest of the headline figures; '!' above {NOISY_CV:.0%}: "
                   "a noisy machine, so intervals and speedups are less trustworthy")  # fmt: skip
    return "\n".join(out)


GOODPUT_TARGET = 0.9  # default goodput fraction a rate must reach to "meet the SLOs"
_RATE_PART = re.compile(r"(?<=[/,])rate=[^,/]+,?")


def _rate(row: dict[str, Any]) -> float | None:
    """A serving row's offered request rate (inf for all at once), or None."""
    value = row.get("serving.request_rate")
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _without_rate(cell: str) -> str:
    """The cell's name with its `rate=` part removed: the cells of one rate sweep share it (option values
    may hold slashes, e.g. a base_url)."""
    return _RATE_PART.sub("", cell).rstrip(",/")


def _rate_text(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


def slo_rates(df: pd.DataFrame, target: float | None = None) -> list[dict[str, Any]]:
    """Per configuration (a cell name without its rate) of the ok serving cells: each measured rate with its
    goodput, and the highest rate whose goodput fraction is >= the target (the row's `serving.slo.target`
    unless `target` is given): the highest rate meeting the SLOs, or None when no rate does."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(df) if not df.empty else []:
        if row.get("status") == "ok" and _rate(row) is not None and _number(row, "goodput_fraction") is not None:
            groups.setdefault(_without_rate(str(row.get("cell"))), []).append(row)
    found = []
    for name, rows in groups.items():
        rows.sort(key=lambda r: _rate(r))
        goal = target if target is not None else (_number(rows[0], "serving.slo.target") or GOODPUT_TARGET)
        meeting = [r for r in rows if _number(r, "goodput_fraction") >= goal]
        found.append({
            "config": name,
            "target": goal,
            "slo": rows[0].get("serving.slo.text"),
            "rates": [(_rate(r), _number(r, "goodput_fraction"), _number(r, "goodput_req_s")) for r in rows],
            "highest_rate": _rate(meeting[-1]) if meeting else None,
        })  # fmt: skip
    return found


def slo_summary(df: pd.DataFrame, target: float | None = None) -> str:
    """The goodput of every measured rate per configuration, and the highest rate meeting the SLOs
    ("" when the table has no ok serving cell)."""
    out = []
    for found in slo_rates(df, target):
        out.append(f"Goodput per request rate, {found['config']} (SLOs: {found['slo']}; "
                   f"meeting them = goodput fraction >= {found['target']:.0%}):")  # fmt: skip
        for rate, fraction, goodput in found["rates"]:
            mark = "meets" if fraction >= found["target"] else "misses"
            out.append(f"  rate {_rate_text(rate):>6} req/s: goodput {goodput:.2f} req/s, "
                       f"{fraction:.0%} of requests good ({mark})")  # fmt: skip
        best = found["highest_rate"]
        out.append(f"  highest rate meeting the SLOs: {_rate_text(best) + ' req/s' if best is not None else 'none'}"
                   + (f" (of {len(found['rates'])} measured)" if best is not None else
                      f" (no measured rate reaches {found['target']:.0%}; try lower rates)"))  # fmt: skip
    return "\n".join(out)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infermatrix-report", description="Summarize an infermatrix results table.")
    parser.add_argument("results", help="a results.jsonl, or a folder holding one (a sweep folder or the store)")
    parser.add_argument("--baseline", metavar="CELL", help="cell to compare against (default: the first ok cell)")
    parser.add_argument("--plots", metavar="DIR", help="also write throughput and latency bar charts to DIR")
    parser.add_argument("--goodput-target", type=float, metavar="FRACTION",
                        help="serving sweeps: the goodput fraction a rate must reach to meet the SLOs "
                             "(default: each cell's scenario.slo.target)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        df = load_results(args.results)
        print(summarize(df, args.baseline))
        if rates := slo_summary(df, args.goodput_target):
            print(rates)
    except (FileNotFoundError, ValueError) as exc:
        print(f"infermatrix-report: {exc}", file=sys.stderr)
        return 2
    if args.plots:
        for path in plot(df, args.plots):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
