"""One config in, one measured and recorded cell out.

Order of work: hash the config; resolve the device, fingerprint the hardware and the code; take
the store's lock for the hash; reuse a stored ok result if the `reuse` policy allows; otherwise
validate, resolve the technique against the engine (unsupported -> skipped), start the engine
(in its own process unless isolation=none), run the scenario, compute metrics, evaluate accuracy
if asked; write result.json atomically; add the row to the store and the sweep table; send it to
the tracker. Any failure, a crashed or hung engine process included, becomes a recorded `failed`
cell with its reason, so a sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import math
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engines import ENGINES, engine_class, options_class
from engines.base import Engine, ModelSpec, Spec, UnsupportedTechnique
from engines.dtypes import resolve_dtype
from engines.environment import code_version, hardware_fingerprint, resolve_device
from engines.worker import start_engine
from harness import hardware, record
from harness.config import (
    NON_SEMANTIC_KEYS,
    SERVING_KEYS,
    Config,
    ConfigError,
    Isolation,
    Reuse,
    ModelConfig,
    ScenarioConfig,
    ScenarioName,
    load,
)
from harness.isolation import CellCrashed, EngineError, EngineProcess
from harness.metrics import pooled_metrics, repeat_cis, request_timing, run_metrics
from harness.models import model_spec
from harness.scenario import measure
from harness.trackers.secrets import redact_text, scrub_config, secret_values


def cell_name(config: dict) -> str:
    """engine/model/scenario/workload, then the techniques chosen and the engine options changed."""
    chosen = [f"{k}={v}" for k, v in config["technique"].items() if v is not None]
    try:
        defaults = asdict(options_class(config["engine"]["name"])())
    except ValueError:  # an unknown engine: the cell fails on load with the list of engines
        defaults = {}
    chosen += [f"{k}={config['engine'][k]}" for k, v in defaults.items()  # where the engine runs is no part of the name
               if k != "python" and k in config["engine"] and config["engine"][k] != getattr(v, "value", v)]  # fmt: skip
    scenario = config["scenario"]
    if scenario["name"] == ScenarioName.serving.value:  # the load offered: a rate sweep's cells differ only here
        rate = scenario.get("request_rate")
        chosen = [f"rate={rate:g}" if isinstance(rate, (int, float)) else f"rate={rate}"] + (
            [f"max_concurrency={scenario['max_concurrency']}"] if scenario.get("max_concurrency") is not None else []
        ) + chosen
    if scenario["name"] == ScenarioName.latency.value and scenario.get("batch_size", 1) != 1:
        chosen = [f"batch={scenario['batch_size']}"] + chosen  # batch 1 and batch 8 cells differ here
    dtype = config["model"].get("dtype", "float32")
    model = config["model"]["name"] + ("" if dtype == "float32" else f":{dtype}")  # fp32 and bf16 cells differ
    parts = [config["engine"]["name"], model, config["scenario"]["name"], config["workload"]["name"]]
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


def serving_block(scenario: ScenarioConfig, schedules: list[dict]) -> dict[str, Any]:
    """What a serving cell offered the engine: rate (a string "inf" for all at once: JSON has no inf),
    arrival process, concurrency limit, measured window, SLOs and each repeat's arrival schedule."""
    rate = scenario.request_rate
    return {
        "request_rate": rate if math.isfinite(rate) else "inf",
        "arrival": scenario.arrival.value,
        "burstiness": scenario.burstiness,
        "max_concurrency": scenario.max_concurrency,
        "warmup_requests": scenario.warmup_requests,
        "cooldown_requests": scenario.cooldown_requests,
        "measured_requests": scenario.num_requests - scenario.warmup_requests - scenario.cooldown_requests,
        "slo": {**asdict(scenario.slo), "text": scenario.slo.describe()},
        "schedules": schedules,
    }


def semantic_config(resolved: dict) -> dict:
    """The resolved config minus keys that do not change what is measured (NON_SEMANTIC_KEYS), and
    minus the serving-only scenario keys in other scenarios."""
    semantic = {k: v for k, v in resolved.items() if k not in NON_SEMANTIC_KEYS}
    scenario = semantic.get("scenario")
    if isinstance(scenario, dict) and scenario.get("name") != ScenarioName.serving.value:
        semantic["scenario"] = {k: v for k, v in scenario.items() if k not in SERVING_KEYS}
    return semantic


def open_engine(config: Config, spec: ModelSpec, device: str, out_dir: Path, result: dict[str, Any]) -> Engine:
    """The cell's engine, in its own process (isolation=process) or in this one."""
    cls = engine_class(config.engine.name)
    if config.scenario.name is ScenarioName.serving and cls.serve is Engine.serve:
        # checked before the model loads; the base method would raise this same error after it
        raise UnsupportedTechnique(f"engine '{config.engine.name}' has no serving loop (scenario=serving needs one)")
    technique = cls.resolve_technique(config.technique, device)
    result["technique_applied"] = {k: getattr(v, "value", v) for k, v in asdict(technique).items()}
    args = (ENGINES[config.engine.name][1], spec, technique, config.engine, device, config.threads,
            config.omp_wait_policy)  # fmt: skip
    if config.isolation is Isolation.process:
        engine = EngineProcess(*args, log_path=out_dir / "worker.log", timeout_s=config.cell_timeout_s)
        facts = engine.facts
    else:
        engine, facts = start_engine(*args)
    result.update(threads=facts["threads"], environment=facts["environment"])
    return engine


def draft_model_spec(name: str, random: bool = False) -> ModelSpec:
    """technique.spec_draft_model: the ModelSpec of conf/model/<name>.yaml, resolved like the target's; with
    random weights (of its architecture) when the target has random weights."""
    path = Path(__file__).resolve().parents[1] / "conf" / "model" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"technique.spec_draft_model='{name}' is not a model config; choose one of: {', '.join(choices)}")
    m: ModelConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))
    spec, _ = model_spec(m.name, "random" if random else m.source.value, m.dtype.value, local_path=m.local_path, hub_id=m.hub_id,
                         architecture=m.architecture, seed=m.seed)  # fmt: skip
    return spec


def measure_cell(config: Config, device: str, out_dir: Path, result: dict[str, Any]) -> None:
    """Fill `result` in place, so whatever was learned before a failure is still recorded."""
    m = config.model
    dtype, dtype_reason = resolve_dtype(m.dtype.value, device)
    spec, kind = model_spec(
        m.name, m.source.value, dtype, local_path=m.local_path, hub_id=m.hub_id,
        architecture=m.architecture, seed=m.seed,
    )  # fmt: skip
    result["model"] = {"name": m.name, "source_kind": kind, "path": spec.path, "dtype": dtype,
                       "dtype_requested": m.dtype.value, "dtype_reason": dtype_reason,
                       "gguf_path": spec.gguf_path, "random_weights": spec.is_random}  # fmt: skip
    draft = config.technique.spec_draft_model
    if config.technique.spec is Spec.draft and draft is not None and draft != m.name:
        spec = replace(spec, draft=draft_model_spec(draft, random=spec.is_random))
        result["model"]["draft"] = {"name": draft, "path": spec.draft.path, "random_weights": spec.draft.is_random}
    if config.eval.selected():  # bad eval inputs fail before the model loads and the measurement runs
        from harness.eval.evaluate import check_inputs

        check_inputs(config.eval, spec)
    engine = open_engine(config, spec, device, out_dir, result)
    try:
        vocab_size, special = vocabulary(spec)
        measurement = measure(engine, config.scenario, config.workload, vocab_size, special, device)
        slo = config.scenario.slo if config.scenario.name is ScenarioName.serving else None
        per_repeat = [run_metrics(run, slo) for run in measurement.runs]
        result["metrics"] = {**pooled_metrics(measurement.runs, slo), **measurement.memory}
        if slo is not None:
            result["serving"] = serving_block(config.scenario, measurement.schedules or [])
        result["ci95"] = repeat_cis(per_repeat)
        result["cost"] = hardware.cost_block(config.hardware, device, result["metrics"], result["ci95"])
        result["energy"] = measurement.energy
        result["repeats"] = [{k: v for k, v in m.items() if not isinstance(v, dict)} for m in per_repeat]
        result["workload"] = {"repeats": [w.describe() for w in measurement.workloads]}
        result["requests"] = per_request_rows(measurement.runs)
        result["engine_stats"] = engine.stats()
        if config.technique.quant is not None:  # asked for (quant=none too: the baseline's perplexity)
            from harness.quantization import quality_block

            result.update(quality_block(engine, spec, result["technique_applied"], config.eval.data_dir))
        if config.eval.selected():
            from harness.eval import evaluate, find_baseline

            rows = list(record.read_rows(Path(config.store) / record.TABLE_NAME))
            baseline = find_baseline(rows, config.eval, record.table_row(result, out_dir / "result.json"))
            result["accuracy"] = evaluate(config.eval, engine, spec, out_dir, baseline)
    finally:
        engine.close()


def run_cell(cfg: DictConfig, out_dir: Path, sweep_dir: Path, sweep_id: str, job_num: int) -> dict[str, Any]:
    """Measure and record one cell (or reuse a stored result); returns its results-table row."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    chash = record.config_hash(semantic_config(resolved))
    store = Path(cfg.store)
    result: dict[str, Any] = {
        "schema": record.SCHEMA, "status": "failed", "reason": None, "cell": cell_name(resolved),
        "sweep_id": sweep_id, "job_num": job_num, "job_dir": str(out_dir), "config": scrub_config(resolved),
        "config_hash": chash,
        "code_version": code_version(), "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }  # fmt: skip
    try:
        config = load(cfg)
        device = resolve_device(config.device.value)
    except (ConfigError, ValueError) as exc:
        fail(result, resolved, f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        return finish(cfg, result, out_dir, sweep_dir, store)
    result["hardware"] = hardware_fingerprint(device)
    result["hardware_id"] = record.hardware_id(result["hardware"])
    result["hardware_config"] = hardware.describe(config.hardware)  # the option asked for, beside what was measured
    result["slurm"] = hardware.slurm_job()
    with record.cell_lock(store, chash):
        if config.reuse is not Reuse.never:
            code = result["code_version"] if config.reuse is Reuse.same_code else None
            if done := record.reusable(store / record.TABLE_NAME, chash, result["hardware_id"], code):
                print(f"[infermatrix] {done['cell']}: already measured ({done['result_path']}, code "
                      f"{done.get('code_version')}); reuse=never measures it again")  # fmt: skip
                # this very job folder measured it (a requeued or rerun task): its row stays a measured row
                again = done.get("job_dir") == str(out_dir)
                reused = {**done, "reused": not again, "sweep_id": sweep_id, "job_num": job_num, "job_dir": str(out_dir),
                          "experiment": record.experiment_columns(resolved)["experiment"]}  # this sweep's study
                reused = hardware.reprice(reused, config.hardware, device)  # at the price asked for now
                record.replace_row(sweep_dir / record.TABLE_NAME, reused)
                return reused
        try:
            measure_cell(config, device, out_dir, result)
            result["status"] = "ok"
        except UnsupportedTechnique as exc:
            result.update(status="skipped", reason=str(exc))
        except CellCrashed as exc:
            fail(result, resolved, f"CellCrashed: {exc}", log_tail=exc.log_tail)
        except EngineError as exc:
            fail(result, resolved, str(exc), traceback=exc.child_traceback)
        except Exception as exc:  # recorded, so the sweep goes on
            fail(result, resolved, f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        return finish(cfg, result, out_dir, sweep_dir, store)


def fail(result: dict[str, Any], resolved: dict, reason: str, **details: str) -> None:
    """Record a failure; a secret the config held is redacted from the texts (the config itself is scrubbed)."""
    secrets = secret_values(resolved)
    result.update(status="failed", reason=redact_text(reason, secrets),
                  **{k: redact_text(v, secrets) for k, v in details.items()})  # fmt: skip


def finish(cfg: DictConfig, result: dict[str, Any], out_dir: Path, sweep_dir: Path, store: Path) -> dict[str, Any]:
    """Write result.json, track it, add its row to the store and the sweep table."""
    result["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
    result["load_average"] = list(os.getloadavg())  # 1, 5, 15 min as the cell ends: how busy the machine was
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
    record.append_row(store / record.TABLE_NAME, row)
    if (sweep_dir / record.TABLE_NAME).resolve() != (store / record.TABLE_NAME).resolve():
        record.replace_row(sweep_dir / record.TABLE_NAME, row)
    return row
