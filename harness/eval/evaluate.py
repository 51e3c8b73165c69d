"""Run the selected lm-eval tasks on one engine and build result.json's `accuracy` block."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

from engines.base import Engine, ModelSpec
from harness.eval.baseline import compare, eval_settings
from harness.eval.config import EvalConfig
from harness.eval.tasks import TaskPlan, plan_tasks

log = logging.getLogger(__name__)


def eval_cache() -> Path:
    from harness.models import cache_root

    return cache_root() / "eval"


@functools.lru_cache(maxsize=4)
def task_manager(task_dir: str) -> Any:
    """lm-eval's task index (about 15 s to build): one per task folder, reused across cells."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=task_dir)


def check_inputs(cfg: EvalConfig, model: ModelSpec) -> tuple[list[TaskPlan], Path]:
    """The task plans, or the reason evaluation cannot run (random weights, no tokenizer, a missing or
    malformed local data file): the runner calls this before the speed measurement, so a bad
    `eval.data_dir` costs seconds, not a whole measurement."""
    if model.is_random:
        raise ValueError(f"model '{model.name}' has random weights: accuracy would be meaningless; set eval=none")
    if model.path is None:
        raise ValueError(f"model '{model.name}' has no path to load its tokenizer from")
    return plan_tasks(cfg, eval_cache())


def evaluate(cfg: EvalConfig, engine: Engine, model: ModelSpec, out_dir: Path, baseline: dict | None) -> dict:
    """Accuracy of `engine` on the tasks `cfg` selects; {} when it selects none.

    Returns per task: metric values with lm-eval's stderr, samples counted, seconds taken,
    the settings and data source, and the path of the per-sample JSONL; then the deltas
    against `baseline` (the baseline cell's result.json, as find_baseline returns it) and
    the pass/fail gate."""
    if not cfg.selected():
        return {}
    plans, task_dir = check_inputs(cfg, model)
    from harness.eval.adapter import EngineLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manager = task_manager(str(task_dir))
    lm = EngineLM(engine, model.path, batch_size=cfg.batch_size)
    tasks = {plan.name: run_task(plan, lm, manager, cfg, out_dir) for plan in plans}
    delta, gate = compare(tasks, baseline, cfg.gate_ratio)
    return {"settings": eval_settings(cfg), "tasks": tasks, "accuracy_delta": delta, "gate": gate}


def run_task(plan: TaskPlan, lm: Any, manager: Any, cfg: EvalConfig, out_dir: Path) -> dict[str, Any]:
    """One lm-eval run of one task (or MMLU group); its block of the accuracy result."""
    from lm_eval import simple_evaluate

    log.info("eval %s: %d-shot, limit %s, data %s", plan.name, plan.num_fewshot, plan.limit, plan.data_source)
    start = time.perf_counter()
    results = simple_evaluate(
        model=lm,
        tasks=[plan.lm_eval_name],
        num_fewshot=plan.num_fewshot,
        limit=plan.limit,
        task_manager=manager,
        log_samples=cfg.log_samples,
        apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.apply_chat_template,
        gen_kwargs={"max_gen_toks": plan.max_gen_toks} if plan.max_gen_toks else None,
    )
    seconds = time.perf_counter() - start
    scores = results["results"][plan.lm_eval_name]
    members = results.get("group_subtasks", {}).get(plan.lm_eval_name) or [plan.lm_eval_name]
    metrics = {}
    for key in plan.metrics:
        metric, filter_name = key.split(",")
        stderr = scores.get(f"{metric}_stderr,{filter_name}")
        metrics[key] = {"value": float(scores[key]), "stderr": None if stderr in (None, "N/A") else float(stderr)}
    block: dict[str, Any] = {
        "lm_eval_task": plan.lm_eval_name,
        "metrics": metrics,
        "n_samples": sum(int(results["n-samples"][m]["effective"]) for m in members),
        "seconds": seconds,
        "num_fewshot": plan.num_fewshot,
        "limit": plan.limit,
        "data_source": plan.data_source,
    }
    if cfg.log_samples:
        path = out_dir / f"samples_{plan.name}.jsonl"
        write_samples(path, {m: results["samples"][m] for m in members})
        block["samples_path"] = str(path)
    return block


def write_samples(path: Path, samples: dict[str, list[dict]]) -> None:
    """One flat JSON object per evaluated document: prompt, target, answer and its scores."""
    with open(path, "w", encoding="utf-8") as f:
        for task, rows in samples.items():
            for row in rows:
                record = {
                    "task": task,
                    "doc_id": row["doc_id"],
                    "prompt": row["arguments"][0][0],
                    "target": row["target"],
                    "responses": row["resps"],
                    "filter": row.get("filter"),
                    "filtered": row["filtered_resps"],
                }
                record.update({m: row[m] for m in row.get("metrics", []) if m in row})
                f.write(json.dumps(record, default=str) + "\n")
