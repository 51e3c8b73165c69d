"""Which lm-eval tasks to run for an EvalConfig, written as task YAMLs in a cache folder.

Every task is lm-eval's own definition: MMLU subjects are the built-in `mmlu_<subject>`
tasks and GSM8K is the built-in `gsm8k`. With local data, a YAML `include:`s the built-in
one and swaps only the data source (dataset_path/dataset_kwargs), so prompts, few-shot
sampling, filters and metrics stay the same. The selected MMLU subjects form one group,
averaged with weights by subject size as lm-eval's `mmlu` group is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.eval.config import EvalConfig, GSM8KConfig, MMLUConfig
from harness.eval.local_data import convert_mmlu, find_release, gsm8k_files

MMLU_GROUP = "infermatrix_mmlu"
GSM8K_LOCAL = "infermatrix_gsm8k_local"
METRICS = {"mmlu": ("acc,none",), "gsm8k": ("exact_match,strict-match", "exact_match,flexible-extract")}


@dataclass(slots=True)
class TaskPlan:
    name: str  # our name: mmlu | gsm8k
    lm_eval_name: str  # the task or group lm-eval runs and reports
    num_fewshot: int
    limit: int | None  # per lm-eval task (per subject for MMLU)
    data_source: str  # "hub" or the local release folder
    metrics: tuple[str, ...]  # lm-eval result keys "<metric>,<filter>"
    max_gen_toks: int | None = None


def builtin_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def mmlu_subjects() -> list[str]:
    """The 57 subjects, from lm-eval's own per-subject task files."""
    folder = builtin_tasks_dir() / "mmlu" / "default"
    return sorted(p.stem.removeprefix("mmlu_") for p in folder.glob("mmlu_*.yaml"))


def mmlu_categories() -> dict[str, list[str]]:
    """Subjects by lm-eval's MMLU category (stem, humanities, social_sciences, other)."""
    categories: dict[str, list[str]] = {}
    for subject in mmlu_subjects():
        spec = yaml.safe_load((builtin_tasks_dir() / "mmlu" / "default" / f"mmlu_{subject}.yaml").read_text())
        category = spec["tag"].removeprefix("mmlu_").removesuffix("_tasks")
        categories.setdefault(category, []).append(subject)
    return categories


def local_override(builtin: Path, task: str, alias: str | None, data_files: dict[str, str]) -> dict:
    """A task identical to `builtin` except for its name and where its data comes from."""
    spec = {"include": str(builtin), "task": task, "tag": [], "dataset_path": "json", "dataset_name": None}
    if alias:
        spec["task_alias"] = alias
    spec["dataset_kwargs"] = {"data_files": data_files}
    return spec


def mmlu_yamls(cfg: MMLUConfig, data_dir: str | None, cache: Path) -> tuple[dict[str, dict], TaskPlan]:
    known = mmlu_subjects()
    subjects = list(cfg.subjects) or known
    unknown = sorted(set(subjects) - set(known))
    if unknown:
        raise ValueError(f"unknown MMLU subjects {unknown}; known: {', '.join(known)}")
    yamls: dict[str, dict] = {}
    if data_dir:
        release = find_release(data_dir, "mmlu", "dev")
        files = convert_mmlu(release, subjects, cache)
        builtin = builtin_tasks_dir() / "mmlu" / "default"
        members = []
        for subject in subjects:
            name = f"infermatrix_mmlu_local_{subject}"
            yamls[name] = local_override(builtin / f"mmlu_{subject}.yaml", name, subject, files[subject])
            members.append(name)
        source = str(release)
    else:
        members, source = [f"mmlu_{s}" for s in subjects], "hub"
    yamls[MMLU_GROUP] = {
        "group": MMLU_GROUP,
        "group_alias": "mmlu",
        "task": members,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    }
    return yamls, TaskPlan("mmlu", MMLU_GROUP, cfg.num_fewshot, cfg.limit, source, METRICS["mmlu"])


def gsm8k_yamls(cfg: GSM8KConfig, data_dir: str | None) -> tuple[dict[str, dict], TaskPlan]:
    if not data_dir:
        return {}, TaskPlan("gsm8k", "gsm8k", cfg.num_fewshot, cfg.limit, "hub", METRICS["gsm8k"], cfg.max_gen_toks)
    release = find_release(data_dir, "gsm8k", "test.jsonl")
    spec = local_override(builtin_tasks_dir() / "gsm8k" / "gsm8k.yaml", GSM8K_LOCAL, "gsm8k", gsm8k_files(release))
    plan = TaskPlan("gsm8k", GSM8K_LOCAL, cfg.num_fewshot, cfg.limit, str(release), METRICS["gsm8k"], cfg.max_gen_toks)
    return {GSM8K_LOCAL: spec}, plan


def plan_tasks(cfg: EvalConfig, cache: Path) -> tuple[list[TaskPlan], Path]:
    """Plans for the selected tasks and the folder of task YAMLs lm-eval must include."""
    yamls: dict[str, dict] = {}
    plans = []
    for name, task in cfg.selected().items():
        data_dir = task.data_dir or cfg.data_dir
        if name == "mmlu":
            extra, plan = mmlu_yamls(task, data_dir, cache)
        else:
            extra, plan = gsm8k_yamls(task, data_dir)
        yamls.update(extra)
        plans.append(plan)
    texts = {name: yaml.safe_dump(spec, sort_keys=False) for name, spec in sorted(yamls.items())}
    digest = hashlib.sha256("".join(f"{n}\n{t}" for n, t in texts.items()).encode()).hexdigest()[:16]
    folder = cache / f"tasks-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        path = folder / f"{name}.yaml"
        if not path.is_file():
            path.write_text(text)
    return plans, folder
