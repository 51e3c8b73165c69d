"""Serving rate sweeps: goodput per offered rate and the highest rate meeting the SLOs."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from harness.report.rows import number as _number
from harness.report.rows import rows as _rows

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
