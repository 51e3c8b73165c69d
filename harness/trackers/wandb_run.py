"""Log one cell's result as one W&B run: config, summary metrics, per-request table, result artifact."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.record import flatten
from harness.trackers.config import TrackerConfig
from harness.trackers.mode import choose_mode
from harness.trackers.secrets import scrub, scrub_argv, secret_values

# Result fields that say what actually ran (engine defaults resolved), beside the requested config.
RESOLVED_FIELDS = ("technique_applied", "model", "workload", "environment")
_ARTIFACT_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def run_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Summary values: status, metrics, intervals (`ci95.<metric>.low/.high/.n/.cv/...`), accuracy and
    engine stats. An interval is a dict, or null bounds with one repeat: flattened, never unpacked."""
    summary: dict[str, Any] = {
        "status": result["status"],
        "reason": result.get("reason"),
        "config_hash": result.get("config_hash"),
    }
    summary.update(flatten(result.get("metrics") or {}))
    summary.update(flatten(result.get("ci95") or {}, "ci95."))
    summary.update(flatten(result.get("accuracy") or {}, "accuracy."))
    summary.update(flatten(result.get("engine_stats") or {}, "engine_stats."))
    return summary


def request_table_columns(requests: list[dict[str, Any]]) -> list[str]:
    """Every key of the per-request records, in first-seen order."""
    columns: dict[str, None] = {}
    for request in requests:
        columns.update(dict.fromkeys(request))
    return list(columns)


def samples_table(wandb: Any, path: Path) -> Any:
    """Per-sample eval outputs (one JSON object a line) as a W&B table, so a failed gate can be read."""
    samples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    columns = request_table_columns(samples)
    rows = [[_cell(sample.get(column)) for column in columns] for sample in samples]
    return wandb.Table(columns=columns, data=rows, allow_mixed_types=True)


def _cell(value: Any) -> Any:
    """Tables take scalars; nested responses are shown as JSON text."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value)


def scenario_name(result: dict[str, Any]) -> str | None:
    scenario = (result.get("config") or {}).get("scenario")
    return scenario.get("name") if isinstance(scenario, dict) else scenario


def artifact_name(cell: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.' only."""
    return ("result-" + _ARTIFACT_NAME_BAD.sub("-", cell).strip("-"))[:128]


@contextlib.contextmanager
def _argv_scrubbed(secrets: set[str]) -> Iterator[None]:
    """wandb records sys.argv at init; hide secret overrides from it while it does."""
    saved = sys.argv[:]
    sys.argv[1:] = scrub_argv(sys.argv[1:], secrets)
    try:
        yield
    finally:
        sys.argv[:] = saved


def log_to_wandb(cfg: TrackerConfig, result: dict[str, Any], result_path: Path, out_dir: Path) -> dict[str, Any]:
    """One run per cell: name = cell, group = sweep, job type = scenario. Raises on any failure."""
    import wandb  # only when tracking: importing wandb costs about a second

    mode, fallback = choose_mode(cfg.mode)
    if fallback:
        print(f"[infermatrix] tracker.mode=auto: {fallback}; upload later with `wandb sync`", file=sys.stderr)
    secrets = secret_values(result)
    config = scrub(result.get("config") or {}, secrets)
    config["resolved"] = scrub({key: result[key] for key in RESOLVED_FIELDS if key in result}, secrets)
    run_root = Path(cfg.dir) if cfg.dir else out_dir
    run_root.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(console="off", disable_git=True, save_code=False, silent=True)
    with _argv_scrubbed(secrets):
        run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=result["cell"],
            group=result.get("sweep_id"),
            job_type=scenario_name(result),
            tags=list(cfg.tags),
            config=config,
            mode=mode,
            dir=str(run_root),
            settings=settings,
        )
    exit_code = 1
    try:
        if mode != "disabled":
            _log_result(wandb, run, result, result_path, secrets)
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
    info: dict[str, Any] = {"tracker": "wandb", "mode": mode}
    if fallback:
        info["offline_reason"] = fallback
    if mode != "disabled":
        info.update(run_id=run.id, run_dir=str(run.settings.sync_dir))
    if mode == "online":
        info["url"] = run.url
    return info


def _log_result(wandb: Any, run: Any, result: dict[str, Any], result_path: Path, secrets: set[str]) -> None:
    run.summary.update(scrub(run_summary(result), secrets))

    requests = result.get("requests") or []
    if requests:
        columns = request_table_columns(requests)
        rows = [[request.get(column) for column in columns] for request in requests]
        run.log({"requests": wandb.Table(columns=columns, data=rows, allow_mixed_types=True)})
    for task, block in ((result.get("accuracy") or {}).get("tasks") or {}).items():
        if block.get("samples_path") and Path(block["samples_path"]).is_file():
            run.log({f"samples/{task}": samples_table(wandb, Path(block["samples_path"]))})

    artifact = wandb.Artifact(artifact_name(result["cell"]), type="result", metadata={"cell": result["cell"]})
    scrubbed = scrub(result, secrets)
    if scrubbed == result:
        artifact.add_file(str(result_path), name="result.json")
    else:  # never upload the runner's file when it holds a secret
        with artifact.new_file("result.json", mode="w") as f:
            json.dump(scrubbed, f, indent=2)
    run.log_artifact(artifact)
