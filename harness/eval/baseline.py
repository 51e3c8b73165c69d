"""The quality gate: find the baseline cell, compare metrics, pass or fail.

`find_baseline` reads results-table rows (flattened dicts: `model`, `engine`,
`technique.kv_cache`, `status`, `result_path`, ...). A row is this cell's baseline when
- its `status` is "ok" and its `result_path` is not this cell's;
- it has the same value as this cell for every key in `cfg.baseline.same` (default: model);
- it has the values in `cfg.baseline.where` (default: engine=hf), compared as strings;
- its result.json has an accuracy block with the same `settings` (tasks, shots, limits,
  subjects, chat template, hub or local data): numbers from different settings never meet.
The last such row in table order (the newest) wins. A cell that itself satisfies `where` is
a baseline and gets none. The gate passes when every metric of every task reaches
`gate_ratio` x the baseline's value (MLPerf's 99% rule with the default 0.99).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.eval.config import EvalConfig


def eval_settings(cfg: EvalConfig) -> dict[str, Any]:
    """What makes two accuracy numbers comparable (not where the files live)."""
    tasks = {}
    for name, task in cfg.selected().items():
        entry = {"num_fewshot": task.num_fewshot, "limit": task.limit}
        if name == "mmlu":
            entry["subjects"] = sorted(task.subjects)
        if name == "gsm8k":
            entry["max_gen_toks"] = task.max_gen_toks
        entry["data"] = "local" if (task.data_dir or cfg.data_dir) else "hub"
        tasks[name] = entry
    return {"tasks": tasks, "apply_chat_template": cfg.apply_chat_template}


def find_baseline(rows: list[dict], cfg: EvalConfig, this_cell: dict) -> dict | None:
    """The baseline cell's result.json (plus its `result_path`), or None. See module doc."""
    where = {key: str(value) for key, value in cfg.baseline.where.items()}
    if all(str(this_cell.get(key)) == value for key, value in where.items()):
        return None
    settings = eval_settings(cfg)
    for row in reversed(rows):
        if row.get("status") != "ok" or not row.get("result_path"):
            continue
        if row.get("result_path") == this_cell.get("result_path"):
            continue
        if any(row.get(key) != this_cell.get(key) for key in cfg.baseline.same):
            continue
        if any(str(row.get(key)) != value for key, value in where.items()):
            continue
        path = Path(row["result_path"])
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        if (result.get("accuracy") or {}).get("settings") == settings:
            return {**result, "result_path": str(path)}
    return None


def compare(tasks: dict[str, Any], baseline: dict | None, gate_ratio: float) -> tuple[dict, dict]:
    """(accuracy_delta, gate) of this cell's task metrics against the baseline's result.

    accuracy_delta maps "<task>/<metric>" to this value minus the baseline's; the gate lists
    each metric's check and passes only if all do. Without a baseline both say so."""
    if baseline is None:
        return {}, {"status": "no_baseline", "passed": None, "ratio": gate_ratio}
    theirs = (baseline.get("accuracy") or {}).get("tasks") or {}
    delta, checks = {}, {}
    for task, block in tasks.items():
        for metric, value in block["metrics"].items():
            ref = ((theirs.get(task) or {}).get("metrics") or {}).get(metric)
            key = f"{task}/{metric}"
            if ref is None:
                checks[key] = {"value": value["value"], "baseline": None, "passed": False}
                continue
            delta[key] = value["value"] - ref["value"]
            threshold = gate_ratio * ref["value"]
            checks[key] = {"value": value["value"], "baseline": ref["value"], "threshold": threshold,
                           "passed": value["value"] >= threshold}
    passed = bool(checks) and all(c["passed"] for c in checks.values())
    gate = {"status": "pass" if passed else "fail", "passed": passed, "ratio": gate_ratio, "checks": checks,
            "baseline_path": baseline.get("result_path")}
    return delta, gate
