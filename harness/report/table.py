"""The printed tables: one fixed-width line per cell with speedups against a baseline cell (printed at the
end of every cell and every sweep, and by `infermatrix report`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from engines.environment import code_version
from harness.metrics import HEADLINE, NOISY_CV, WIDE_BELOW_N
from harness.report.rows import interval as _interval
from harness.report.rows import number as _number
from harness.report.rows import rows as _rows

THROUGHPUT = "output_throughput_tok_s"
E2E_MEAN = "e2el_ms.mean"
# (header, results-table column) of the latency columns, in the order a request lives them.
LATENCIES = (("TTFT p50 ms", "ttft_ms.p50"), ("TPOT mean ms", "tpot_ms.mean"),
             ("ITL p50 ms", "itl_ms.p50"), ("E2E p50 ms", "e2el_ms.p50"))  # fmt: skip
SHORT_NAMES = {"output_throughput_tok_s": "out tok/s", "ttft_ms.mean": "TTFT", "tpot_ms.mean": "TPOT",
               "e2el_ms.mean": "E2E"}  # fmt: skip


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


def accuracy_columns(rows: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """A column per accuracy metric in the table (value ± lm-eval's stderr) and one for the quality gate;
    none when no row was evaluated."""
    metrics = dict.fromkeys(
        key for row in rows for key in row
        if key.startswith("accuracy.") and key.count(".") == 2 and key != "accuracy.gate"
    )  # fmt: skip

    def value(row: dict[str, Any], key: str) -> str:
        number, stderr = _number(row, key), _number(row, f"{key}.stderr")
        return _fmt(number, ".3f") + (f"±{stderr:.3f}" if number is not None and stderr is not None else "")

    columns = [(key.removeprefix("accuracy.").replace(".", " ").removesuffix(",none"), lambda r, k=key: value(r, k))
               for key in metrics]  # fmt: skip
    if any(row.get("accuracy.gate") for row in rows):
        columns.append(("gate", lambda r: str(r.get("accuracy.gate") or "-")))
    return columns


def summarize(df: pd.DataFrame, baseline: str | None = None, code: str | None = None) -> str:
    """One fixed-width line per cell: status, latencies, output tok/s with its 95% CI, the largest CV
    over repeats ('!' above 5%), peak memory, speedups against the baseline cell, and accuracy with the
    quality gate when cells were evaluated; failed and
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
        *accuracy_columns(rows),
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
