"""Result files and results tables, written so that a crash never leaves half a record.

- `result.json` (one per cell, in the Hydra job directory): written to a temporary file in the
  same folder, fsynced, then renamed over the target.
- `results.jsonl` (one flattened row per cell): appended under an exclusive lock, one whole
  line per write; `pandas.read_json(path, lines=True)` reads it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = "infermatrix.result/1"
TABLE_NAME = "results.jsonl"


def _clean(obj: Any) -> Any:
    """JSON has no NaN: write null instead, so every reader accepts the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, indent=2, sort_keys=False, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_hash(config: dict) -> str:
    """Stable hash of what a cell measures (callers drop non-semantic keys first)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(obj: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def table_row(result: dict, result_path: Path) -> dict[str, Any]:
    """The flattened summary of a cell: identity, technique, metrics, CIs; no raw timings."""
    config = result.get("config", {})
    row = {
        "cell": result["cell"],
        "status": result["status"],
        "reason": result.get("reason"),
        "config_hash": result["config_hash"],
        "sweep_id": result.get("sweep_id"),
        "job_num": result.get("job_num"),
        "engine": config.get("engine", {}).get("name"),
        "model": config.get("model", {}).get("name"),
        "scenario": config.get("scenario", {}).get("name"),
        "workload": config.get("workload", {}).get("name"),
        "device": result.get("environment", {}).get("device"),
        "result_path": str(result_path),
        "finished_at": result.get("finished_at"),
    }
    row.update(flatten(result.get("technique_applied") or config.get("technique", {}), "technique."))
    row.update(flatten(result.get("metrics", {})))
    row.update({f"ci95.{k}": v for k, v in (result.get("ci95") or {}).items()})
    row.update(accuracy_columns(result.get("accuracy") or {}))
    row.update(flatten(result.get("tracker", {}), "tracker."))
    return _clean(row)


def accuracy_columns(accuracy: dict) -> dict[str, Any]:
    """`accuracy.<task>.<metric>` values (and stderr) plus the quality gate's verdict."""
    columns: dict[str, Any] = {}
    for task, block in (accuracy.get("tasks") or {}).items():
        for metric, value in block["metrics"].items():
            columns[f"accuracy.{task}.{metric}"] = value["value"]
            columns[f"accuracy.{task}.{metric}.stderr"] = value["stderr"]
    if accuracy.get("gate"):
        columns["accuracy.gate"] = accuracy["gate"]["status"]
    return columns


def append_row(table: Path, row: dict[str, Any]) -> None:
    table.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_clean(row), allow_nan=False) + "\n"
    with open(table, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_rows(table: Path) -> Iterator[dict[str, Any]]:
    """Rows of a results table; a torn last line (a crash mid-write) is skipped."""
    if not table.is_file():
        return
    with open(table) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def finished_ok(table: Path, chash: str) -> dict[str, Any] | None:
    """The newest ok row for a config hash whose result.json still exists."""
    found = None
    for row in read_rows(table):
        if row.get("config_hash") == chash and row.get("status") == "ok" and Path(row["result_path"]).is_file():
            found = row
    return found
