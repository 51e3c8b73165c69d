"""Reading results tables: rows as flat dicts, numbers and intervals out of them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.record import TABLE_NAME, flatten, read_rows


def table_path(path_or_dir: str | Path) -> Path:
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / TABLE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results table at {path}")
    return path


def load_results(path_or_dir: str | Path) -> pd.DataFrame:
    """The rows of a results.jsonl (or of the one inside a folder), in the order they were written."""
    return pd.DataFrame(list(read_rows(table_path(path_or_dir))))


def load_tables(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The flat rows of one or more results tables, in the order given and written."""
    found = []
    for path in paths:
        found += [flatten(row) for row in read_rows(table_path(path))]
    return found


def rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The table's rows with nested values flattened: an interval block `ci95.<figure>` = {low, high,
    ...} becomes `ci95.<figure>.low`, ..., whether or not the row was flattened when written."""
    return [flatten(row) for row in df.to_dict("records")]


def number(row: dict[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None or isinstance(value, (list, str, dict)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def interval(row: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """A metric's 95% CI: `ci95.<metric>.low`/`.high` columns, or the [lo, hi] pair of older tables."""
    pair = row.get(f"ci95.{metric}")
    if isinstance(pair, (list, tuple)) and len(pair) == 2 and None not in pair:
        return float(pair[0]), float(pair[1])
    low, high = number(row, f"ci95.{metric}.low"), number(row, f"ci95.{metric}.high")
    return (low, high) if low is not None and high is not None else None


def matches(row: dict[str, Any], selector: dict[str, Any]) -> bool:
    """Whether every column the selector names holds its value (compared as text: true == True == "true")."""
    return all(text(row.get(column)) == text(value) for column, value in selector.items())


def text(value: Any) -> str:
    """A cell value as comparable text: booleans lower-case, whole floats without '.0'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "null" if value is None else str(value)
