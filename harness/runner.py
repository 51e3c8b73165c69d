"""One config in, one measured and recorded cell out.

Order of work: hash the config and skip it if the store already has an ok result; validate;
resolve the technique against the engine (unsupported -> skipped); build the engine; run the
scenario; compute metrics; evaluate accuracy if asked; write result.json atomically; append the
row to the store and the sweep table; send it to the tracker. Any failure becomes a recorded
`failed` cell with its reason, so a sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engines import engine_class
from engines.base import ModelSpec, UnsupportedTechnique
from harness import record
from harness.config import NON_SEMANTIC_KEYS, Config, ConfigError, Device, load
from harness.environment import collect_environment, configure_threads
from harness.metrics import pooled_metrics, repeat_cis, request_timing, run_metrics
from harness.models import model_spec
from harness.scenario import measure


def resolve_device(device: Device) -> str:
    import torch

    if device is Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device (device=auto picks what exists)")
    return device.value


def cell_name(config: dict) -> str:
    chosen = [f"{k}={v}" for k, v in config["technique"].items() if v is not None]
    parts = [config["engine"]["name"], config["model"]["name"], config["scenario"]["name"], config["workload"]["name"]]
    return "/".join(parts) + ("/" + ",".join(chosen) if chosen else "")


def vocabulary(spec: ModelSpec) -> tuple[int, set[int]]:
    """Vocabulary size and special token ids, from the model's config."""
    if spec.random_config is not None:
        cfg = spec.random_config
    elif Path(spec.path).is_dir():
        cfg = json.loads((Path(spec.path) / "config.json").read_text())
    else:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(spec.path).to_dict()
    special: set[int] = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = cfg.get(key)
        special.update(value if isinstance(value, list) else [value] if value is not None else [])
    return int(cfg["vocab_size"]), special


def per_request_rows(runs: list) -> list[dict[str, Any]]:
    rows = []
    for repeat, outputs in enumerate(runs):
        for out in outputs:
            t = request_timing(out)
            rows.append({"request_id": out.request_id, "repeat": repeat, **asdict(t)})
    return rows


def measure_cell(config: Config, out_dir: Path, result: dict[str, Any]) -> None:
    """Fill `result` in place, so whatever was learned before a failure is still recorded."""
    result["threads"] = configure_threads(config.threads)
    device = resolve_device(config.device)
    result["environment"] = collect_environment(device)
    m = config.model
    spec, kind = model_spec(
        m.name, m.source.value, m.dtype.value, local_path=m.local_path, hub_id=m.hub_id,
        architecture=m.architecture, seed=m.seed,
    )  # fmt: skip
    result["model"] = {"name": m.name, "source_kind": kind, "path": spec.path, "dtype": m.dtype.value,
                       "random_weights": spec.is_random}  # fmt: skip
    cls = engine_class(config.engine.name)
    technique = cls.resolve_technique(config.technique)
    result["technique_applied"] = {k: getattr(v, "value", v) for k, v in asdict(technique).items()}
    engine = cls(spec, technique, config.engine.options(), device)
    try:
        vocab_size, special = vocabulary(spec)
        measurement = measure(engine, config.scenario, config.workload, vocab_size, special, device)
        per_repeat = [run_metrics(run) for run in measurement.runs]
        result["metrics"] = {**pooled_metrics(measurement.runs), **measurement.memory}
        result["ci95"] = repeat_cis(per_repeat)
        result["repeats"] = [{k: v for k, v in m.items() if not isinstance(v, dict)} for m in per_repeat]
        result["workload"] = {"repeats": [w.describe() for w in measurement.workloads]}
        result["requests"] = per_request_rows(measurement.runs)
        result["engine_stats"] = engine.stats()
        if config.eval.selected():
            from harness.eval import evaluate, find_baseline

            rows = list(record.read_rows(Path(config.store) / record.TABLE_NAME))
            baseline = find_baseline(rows, config.eval, record.table_row(result, out_dir / "result.json"))
            result["accuracy"] = evaluate(config.eval, engine, spec, out_dir, baseline)
    finally:
        engine.close()


def run_cell(cfg: DictConfig, out_dir: Path, sweep_dir: Path, sweep_id: str, job_num: int) -> dict[str, Any]:
    """Measure and record one cell; returns its results-table row."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    semantic = {k: v for k, v in resolved.items() if k not in NON_SEMANTIC_KEYS}
    chash = record.config_hash(semantic)
    store_table = Path(cfg.store) / record.TABLE_NAME
    if not cfg.force and (done := record.finished_ok(store_table, chash)):
        print(f"[infermatrix] {done['cell']}: already measured ({done['result_path']}); force=true reruns it")
        record.append_row(sweep_dir / record.TABLE_NAME, {**done, "reused": True, "sweep_id": sweep_id})
        return done
    result: dict[str, Any] = {
        "schema": record.SCHEMA, "status": "failed", "reason": None, "cell": cell_name(resolved),
        "sweep_id": sweep_id, "job_num": job_num, "config": resolved, "config_hash": chash,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }  # fmt: skip
    try:
        config = load(cfg)
        measure_cell(config, out_dir, result)
        result["status"] = "ok"
    except UnsupportedTechnique as exc:
        result.update(status="skipped", reason=str(exc))
    except Exception as exc:  # recorded, so the sweep goes on
        result.update(reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    result["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
    result_path = out_dir / "result.json"
    record.write_json_atomic(result_path, result)
    from harness.trackers import track_result  # after the write: a tracker failure loses nothing

    try:
        tracker = OmegaConf.to_object(cfg.tracker)
    except Exception as exc:  # an invalid tracker config already failed the cell above
        result["tracker"] = {"tracker": "invalid", "error": str(exc)}
    else:
        result["tracker"] = track_result(tracker, result, result_path, out_dir)
    row = record.table_row(result, result_path)
    for table in {store_table.resolve(), (sweep_dir / record.TABLE_NAME).resolve()}:
        record.append_row(table, row)
    return row
