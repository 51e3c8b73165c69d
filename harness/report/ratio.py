"""A cell's figure and a ratio of two cells' figures, each with its 95% interval.

Ratios get a Student-t interval on the log scale: log(a/b) has standard error
sqrt(cv_a^2/n_a + cv_b^2/n_b) (the delta method, cv = std/mean over repeats), with Welch's degrees of
freedom. It is the interval of each cell's own t interval carried through the ratio; n < 2 on either side
gives none. Figures with no interval block (counts, byte sizes) are exact and their ratio is too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import stats

from harness.report.rows import interval, number


@dataclass(slots=True, frozen=True)
class Figure:
    value: float
    low: float | None = None  # 95% interval; None when there is none (one repeat) or no spread (exact)
    high: float | None = None
    n: int | None = None  # repeats behind the value; None for an exact figure
    cv: float | None = None

    @property
    def exact(self) -> bool:
        return self.n is None


def figure(row: dict[str, Any], metric: str) -> Figure | None:
    """The row's value of `metric` with its interval block (`ci95.<metric>.*`), or None if it has no value."""
    value = number(row, metric)
    if value is None:
        return None
    n = number(row, f"ci95.{metric}.n")
    if n is None:
        return Figure(value)
    ci = interval(row, metric)
    return Figure(value, *(ci or (None, None)), n=int(n), cv=number(row, f"ci95.{metric}.cv"))


def ratio(top: Figure, bottom: Figure) -> Figure | None:
    """top / bottom with the log-scale t interval described above; None when bottom is 0."""
    if bottom.value == 0 or top.value == 0:
        return None
    value = top.value / bottom.value
    if top.exact and bottom.exact:
        return Figure(value)
    parts = [(f.cv or 0.0, f.n) for f in (top, bottom) if not f.exact]
    if any(n is None or n < 2 or cv is None for cv, n in parts):
        return Figure(value, n=min(n or 1 for _, n in parts))
    variances = [cv * cv / n for cv, n in parts]
    se = math.sqrt(sum(variances))
    if se == 0:
        return Figure(value, value, value, n=min(n for _, n in parts), cv=0.0)
    df = se**4 / sum(v * v / (n - 1) for v, (_, n) in zip(variances, parts))
    half = stats.t.ppf(0.975, df) * se
    return Figure(value, value * math.exp(-half), value * math.exp(half), n=min(n for _, n in parts), cv=se)
