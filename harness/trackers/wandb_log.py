"""Read back what an offline W&B run logged, from its `run-<id>.wandb` transaction log.

wandb writes the log from its Go core (package `core/pkg/leveldb`), in LevelDB's log framing:
- a 7-byte file header: ":W&B", magic 0xBEE1 (uint16 LE), version 0;
- 32 KiB blocks (counted from the start of the file, header included); a block tail shorter
  than a record header is zero padding;
- records: crc32 (uint32 LE), length (uint16 LE), type (FULL=1, FIRST=2, MIDDLE=3, LAST=4), data.
  Unlike LevelDB, wandb uses the IEEE CRC-32 (zlib's), unmasked, over the type byte and data
  (checked against logs written by wandb 0.31, and what wandb's older Python writer did).
A FULL record, or FIRST + MIDDLE* + LAST, holds one serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = struct.Struct("<4sHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
BLOCK_SIZE = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbLogError(ValueError):
    """The file is not a wandb transaction log, or is corrupt or cut short."""


def read_chunks(data: bytes) -> Iterator[bytes]:
    """The payload of each logical record, reassembled across blocks, with its CRC checked."""
    if len(data) < FILE_HEADER.size:
        raise WandbLogError("file shorter than the 7-byte header")
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if (ident, magic, version) != (IDENT, MAGIC, VERSION):
        raise WandbLogError(f"not a wandb v0 log: header {data[:FILE_HEADER.size]!r}")
    pos, pending = FILE_HEADER.size, None
    while pos < len(data):
        block_left = BLOCK_SIZE - pos % BLOCK_SIZE
        if block_left < RECORD_HEADER.size:
            pos += block_left  # zero trailer
            continue
        if pos + RECORD_HEADER.size > len(data):
            raise WandbLogError(f"record header cut short at offset {pos}")
        crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        start = pos + RECORD_HEADER.size
        if length > block_left - RECORD_HEADER.size or start + length > len(data):
            raise WandbLogError(f"record at offset {pos} runs past its block or the file")
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise WandbLogError(f"crc mismatch in record at offset {pos}")
        pos = start + length
        if kind == FULL and pending is None:
            yield payload
        elif kind == FIRST and pending is None:
            pending = bytearray(payload)
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += payload
            if kind == LAST:
                yield bytes(pending)
                pending = None
        else:
            raise WandbLogError(f"record type {kind} out of order at offset {pos - length - RECORD_HEADER.size}")
    if pending is not None:
        raise WandbLogError("log ends inside a multi-block record")


def read_records(path: str | Path) -> Iterator[pb.Record]:
    """Every protobuf Record in a `.wandb` log, in the order wandb wrote them."""
    for payload in read_chunks(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def find_log(run_dir: str | Path) -> Path:
    """The `.wandb` log of a run folder (`.../offline-run-<time>-<id>`), or the path itself if it is one."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    logs = sorted(run_dir.glob("run-*.wandb"))
    if len(logs) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb in {run_dir}, found {len(logs)}")
    return logs[0]


def finished_records(log: Path, wait_s: float) -> list[pb.Record]:
    """The log's records once it ends with the run's exit record.

    wandb's core process goes on writing the log after `run.finish()` returns (seen: a 270 KB
    log still at 256 KiB, cut inside a record), so a log read too early looks truncated.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            records = list(read_records(log))
            if records and records[-1].WhichOneof("record_type") == "exit":
                return records
        except WandbLogError:
            pass  # still being written
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log} has no exit record after {wait_s} s: the run is still going or crashed")
        time.sleep(0.05)


def read_run(run_dir: str | Path, wait_s: float | None = 30.0) -> dict[str, Any]:
    """What a run logged: its identity, config, summary, history rows, artifacts and tables.

    Waits up to `wait_s` for the log to be complete (see `finished_records`); `wait_s=None`
    reads it as it is, for a run that is still going or crashed. Tables come from `table-file`
    values in the history and summary; their rows are read from the run's `files/` folder,
    where wandb keeps them beside the log.
    """
    log = find_log(run_dir)
    records = list(read_records(log)) if wait_s is None else finished_records(log, wait_s)
    run: dict[str, Any] = {}
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    artifacts: list[dict[str, Any]] = []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = _run_identity(record.run)
            _apply(config, record.run.config)
            _apply(summary, record.run.summary)
        elif kind == "config":
            _apply(config, record.config)
        elif kind == "summary":
            _apply(summary, record.summary)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, _path(item), _history_value(item))
            history.append(row)
        elif kind == "artifact":
            artifacts.append(_artifact(record.artifact))
    for values in (config, summary):
        values.pop("_wandb", None)
    files_dir = log.parent / "files"
    return {
        "run": run,
        "config": config,
        "summary": summary,
        "history": history,
        "artifacts": artifacts,
        "tables": _tables(history + [summary], files_dir),
    }


def _run_identity(run: pb.RunRecord) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "project": run.project,
        "entity": run.entity,
        "name": run.display_name,
        "group": run.run_group,
        "job_type": run.job_type,
        "tags": list(run.tags),
    }


def _path(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _set(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _apply(target: dict[str, Any], update: pb.ConfigRecord | pb.SummaryRecord) -> None:
    for item in update.update:
        _set(target, _path(item), json.loads(item.value_json))
    for item in update.remove:
        *parents, last = _path(item)
        node = target
        for key in parents:
            node = node.get(key, {})
        node.pop(last, None)


def _history_value(item: pb.HistoryItem) -> Any:
    typed = item.WhichOneof("value")
    if typed is None:
        return json.loads(item.value_json)
    if typed == "none":
        return None
    if typed == "json":
        return json.loads(item.json)
    return getattr(item, typed)


def _artifact(artifact: pb.ArtifactRecord) -> dict[str, Any]:
    return {
        "name": artifact.name,
        "type": artifact.type,
        "digest": artifact.digest,
        "aliases": list(artifact.aliases),
        "files": [
            {"path": e.path, "digest": e.digest, "size": e.size, "local_path": e.local_path}
            for e in artifact.manifest.contents
        ],
    }


def _tables(rows: list[dict[str, Any]], files_dir: Path) -> list[dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    for row in rows:
        for key, value in row.items():
            if not (isinstance(value, dict) and value.get("_type") == "table-file"):
                continue
            path = value["path"]
            if path in tables:
                continue
            table = {"key": key, "path": path, "nrows": value.get("nrows"), "ncols": value.get("ncols")}
            table_file = files_dir / path
            if table_file.is_file():
                content = json.loads(table_file.read_text())
                table["columns"], table["data"] = content["columns"], content["data"]
            tables[path] = table
    return list(tables.values())
