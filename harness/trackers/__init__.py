"""Experiment trackers: send each cell's result to W&B (offline unless the user is logged in).

The runner writes result.json first and then calls `track_result`, so a tracker failure is
reported in the returned info and never loses a result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.trackers.config import TrackerConfig
from harness.trackers.secrets import redact_text, secret_values

__all__ = ["TrackerConfig", "track_result"]

log = logging.getLogger(__name__)


def track_result(cfg: TrackerConfig, result: dict[str, Any], result_path: Path, out_dir: Path) -> dict[str, Any]:
    """Log one cell; returns what the results table records about it.

    {"tracker": "none"} | {"tracker": "wandb", "mode", "run_id", "run_dir"[, "url"][, "offline_reason"]}
    | {"tracker": "wandb", "error": "..."} when logging failed.
    """
    if cfg.name == "none":
        return {"tracker": "none"}
    from harness.trackers.wandb_run import log_to_wandb

    try:
        return log_to_wandb(cfg, result, Path(result_path), Path(out_dir))
    except Exception as exc:  # a tracker must never cost the user a measured result
        error = redact_text(f"{type(exc).__name__}: {exc}", secret_values(result))
        log.warning("W&B tracking failed for %s: %s", result.get("cell"), error)
        return {"tracker": "wandb", "error": error}
