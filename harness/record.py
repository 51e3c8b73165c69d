"""Result files and results tables, written so that a crash never leaves half a record.

- `result.json` (one per cell, in the Hydra job directory): written to a temporary file in the
  same folder, fsynced, then renamed over the target.
- `results.jsonl` (one flattened row per cell): appended under an exclusive lock (on a sidecar
  `.lock` file), one whole line per write; `pandas.read_json(path, lines=True)` reads it. A sweep's
  own table keeps one row per job folder: rerunning into the same sweep folder replaces the job's row
  (keyed by folder, not job number: every task of a SLURM array is job 0 of its own one-cell run).
- `locks/<config hash>.lock` in the store: held while a cell is measured, so two processes never
  measure the same cell at once (the kernel releases it if the holder dies).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
        "job_dir": result.get("job_dir"),
        "engine": config.get("engine", {}).get("name"),
        "model": config.get("model", {}).get("name"),
        "scenario": config.get("scenario", {}).get("name"),
        "workload": config.get("workload", {}).get("name"),
        "device": result.get("environment", {}).get("device") or (result.get("hardware") or {}).get("device"),
        "hardware_id": result.get("hardware_id"),
        "hardware": describe_hardware(result.get("hardware") or {}),
        "hardware_config": (result.get("hardware_config") or {}).get("name"),
        "code_version": result.get("code_version"),
        "result_path": str(result_path),
        "finished_at": result.get("finished_at"),
        "load_avg_1m": (result.get("load_average") or [None])[0],
    }
    row.update(flatten(result.get("technique_applied") or config.get("technique", {}), "technique."))
    row.update(flatten(result.get("metrics", {})))
    serving = {k: v for k, v in (result.get("serving") or {}).items() if k != "schedules"}
    row.update(flatten(serving, "serving."))
    row.update(flatten(result.get("ci95") or {}, "ci95."))
    row.update(accuracy_columns(result.get("accuracy") or {}))
    row.update(flatten(result.get("cost") or {}, "cost."))
    row.update(flatten({k: v for k, v in (result.get("energy") or {}).items() if k != "by_domain"}, "energy."))
    row.update(flatten(result.get("slurm") or {}, "slurm."))
    speculation = (result.get("engine_stats") or {}).get("speculation") or {}
    row.update({f"spec.{k}": speculation.get(k) for k in SPEC_COLUMNS if k in speculation})
    row.update(flatten(result.get("tracker", {}), "tracker."))
    return _clean(row)


# engine_stats["speculation"] figures a results table carries (engines/own/speculative/stats.py)
SPEC_COLUMNS = ("acceptance_rate", "mean_accepted_length", "tokens_per_decode_step", "draft_s_per_step",
                "verify_s_per_step")  # fmt: skip


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


def hardware_id(fingerprint: dict[str, Any]) -> str:
    return config_hash(fingerprint)


def describe_hardware(fingerprint: dict[str, Any]) -> str | None:
    """A short human label: "cuda: 8x NVIDIA H100 (driver 570.1)" or "cpu: AMD EPYC ... (2/2 cores)"."""
    if not fingerprint:
        return None
    if fingerprint.get("gpu_names"):
        names = fingerprint["gpu_names"]
        return f"{fingerprint['device']}: {len(names)}x {names[0]} (driver {fingerprint.get('gpu_driver')})"
    return (f"{fingerprint.get('device')}: {fingerprint.get('cpu_model')} "
            f"({fingerprint.get('usable_cores')}/{fingerprint.get('logical_cores')} cores)")  # fmt: skip


@contextmanager
def _table_lock(table: Path) -> Iterator[None]:
    """Every writer of a table holds this (a sidecar file, since replace_row swaps the table's inode)."""
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table.with_name(f".{table.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_row(table: Path, row: dict[str, Any]) -> None:
    line = json.dumps(_clean(row), allow_nan=False) + "\n"
    with _table_lock(table), open(table, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def replace_row(table: Path, row: dict[str, Any], key: str = "job_dir") -> None:
    """Write `row` in place of the row with the same `key` value, else at the end (atomically: a crash
    keeps the old table)."""
    with _table_lock(table):
        rows = list(read_rows(table))
        at = next((i for i, r in enumerate(rows) if r.get(key) == row.get(key)), len(rows))
        rows[at : at + 1] = [row]  # in the old row's place, so the table keeps its job order
        text = "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in rows)
        fd, tmp = tempfile.mkstemp(dir=table.parent, prefix=f".{table.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, table)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextmanager
def cell_lock(store: Path, chash: str) -> Iterator[None]:
    """Hold the store's lock for one config hash; waits (saying for whom) while another process holds it."""
    path = store / "locks" / f"{chash}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            print(f"[infermatrix] waiting: {holder} is measuring this cell ({chash})", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


def reusable(table: Path, chash: str, hw_id: str, code: str | None) -> dict[str, Any] | None:
    """The newest ok row measuring this config on this hardware (and, unless `code` is None, by this
    code version) whose result.json still exists."""
    found = None
    for row in read_rows(table):
        if (row.get("config_hash") == chash and row.get("status") == "ok" and row.get("hardware_id") == hw_id
                and (code is None or row.get("code_version") == code) and Path(row["result_path"]).is_file()):
            found = row  # fmt: skip
    return found
