"""Accuracy of SmolLM2-135M-Instruct through our engines on CPU, timed against lm-eval's own HF backend.

MMLU: a fixed subset, the first --mmlu-per-subject test questions of --subjects-per-category subjects
from each of lm-eval's four categories (evenly spaced in alphabetical order; 0 = all 57 subjects).
GSM8K: the first --gsm8k test problems. Data from --data-dir (the original releases; default:
shared/data beside the checkout; `hub` = the HF hub). `lm-eval-hf` in --engines is lm-eval's HFLM
(what `lm_eval --model hf --model_args pretrained=<folder>,device=cpu,dtype=float32` builds) run on
the same generated task YAMLs through the same simple_evaluate call as our engines, in this process.
The first engine is the baseline of the others for the 99% gate and for per-choice log-likelihoods.

    .venv/bin/python experiments/accuracy_cpu.py --engines lm-eval-hf,own,hf \\
        --subjects-per-category 0 --mmlu-per-subject 2 --gsm8k 0     # the 114-question MMLU timing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from engines import create_engine  # noqa: E402
from engines.base import ModelSpec, Technique  # noqa: E402
from harness.eval import EvalConfig, GSM8KConfig, MMLUConfig  # noqa: E402
from harness.eval.adapter import EngineLM  # noqa: E402
from harness.eval.baseline import compare  # noqa: E402
from harness.eval.evaluate import check_inputs, run_task, task_manager  # noqa: E402
from harness.eval.tasks import mmlu_categories, mmlu_subjects  # noqa: E402
from harness.models import embedded_model_dir  # noqa: E402

LM_EVAL_HF = "lm-eval-hf"


def stratified_subjects(per_category: int) -> list[str]:
    if per_category == 0:
        return mmlu_subjects()
    chosen = []
    for subjects in mmlu_categories().values():
        count = min(per_category, len(subjects))  # more than a category has: all of it
        step = len(subjects) / count
        chosen += [subjects[int(i * step)] for i in range(count)]
    return sorted(chosen)


def open_lm(name: str, model: ModelSpec, batch_size: int, lm_eval_batch_size: int) -> tuple[object, object | None]:
    """(lm-eval model, our engine to close or None)."""
    if name == LM_EVAL_HF:
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model.path, device="cpu", dtype=model.dtype, batch_size=lm_eval_batch_size), None
    engine = create_engine(name, model, Technique(), {}, "cpu")
    return EngineLM(engine, model.path, batch_size=batch_size), engine


def choice_logprobs(path: str) -> dict[tuple[str, int], list[float]]:
    """(task, doc_id) -> the log-likelihood of each answer choice, from a samples_<task>.jsonl."""
    found = {}
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        found[(row["task"], row["doc_id"])] = [float(choice[0][0]) for choice in row["responses"]]
    return found


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="hf,own", help=f"comma-separated: hf, own, ..., {LM_EVAL_HF}")
    parser.add_argument("--subjects-per-category", type=int, default=3, help="0 = all 57 subjects")
    parser.add_argument("--mmlu-per-subject", type=int, default=2)
    parser.add_argument("--gsm8k", type=int, default=8, help="GSM8K test problems (0 = skip)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="or 'hub'")
    parser.add_argument("--batch-size", type=int, default=16, help="our engines: sequences per score call")
    parser.add_argument("--lm-eval-batch-size", type=int, default=1, help="lm-eval's HFLM (its CLI default: 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for samples_<task>.jsonl (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    subjects = stratified_subjects(args.subjects_per_category)
    if args.data_dir != "hub" and not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder (use --data-dir hub for the HF hub)")
    data_dir = None if args.data_dir == "hub" else args.data_dir
    cfg = EvalConfig(
        mmlu=MMLUConfig(limit=args.mmlu_per_subject, subjects=subjects) if args.mmlu_per_subject else None,
        gsm8k=GSM8KConfig(limit=args.gsm8k) if args.gsm8k else None,
        data_dir=data_dir,
        batch_size=args.batch_size,
    )
    model = ModelSpec(name="smollm2-135m", path=str(embedded_model_dir()), dtype="float32")
    plans, task_dir = check_inputs(cfg, model)
    manager = task_manager(str(task_dir))
    out_root = Path(args.out or tempfile.mkdtemp(prefix="accuracy_cpu-"))
    names = args.engines.split(",")
    print(f"MMLU subjects ({len(subjects)}): {', '.join(subjects)}", flush=True)
    print(f"data: {data_dir or 'hub'}; torch threads {args.threads}; dtype {model.dtype}; our batch {args.batch_size}"
          f" sequences/call; {LM_EVAL_HF} batch {args.lm_eval_batch_size}; samples under {out_root}", flush=True)

    rows, timing, baseline, reference = [], [], None, {}
    for name in names:
        start, load_before = time.perf_counter(), load()
        lm, engine = open_lm(name, model, args.batch_size, args.lm_eval_batch_size)
        load_s = time.perf_counter() - start
        try:
            (out_root / name).mkdir(parents=True, exist_ok=True)
            tasks = {plan.name: run_task(plan, lm, manager, cfg, out_root / name) for plan in plans}
        finally:
            if engine is not None:
                engine.close()
        _, gate = compare(tasks, baseline, cfg.gate_ratio)
        baseline = baseline or {"accuracy": {"tasks": tasks}, "result_path": name}
        for task, result in tasks.items():
            for metric, value in result["metrics"].items():
                rows.append((name, task, metric, value["value"], value["stderr"], result["n_samples"],
                             result["seconds"], gate["status"]))  # fmt: skip
        if "mmlu" in tasks:
            mine = choice_logprobs(tasks["mmlu"]["samples_path"])
            reference = reference or mine
            diff = max(abs(a - b) for key, choices in mine.items() for a, b in zip(choices, reference[key]))
            flips = sum(max(range(4), key=c.__getitem__) != max(range(4), key=reference[k].__getitem__)
                        for k, c in mine.items())  # fmt: skip
            timing.append((name, tasks["mmlu"]["seconds"], tasks["mmlu"]["metrics"]["acc,none"]["value"],
                           tasks["mmlu"]["n_samples"], diff, flips, load_s, load_before, load()))  # fmt: skip
        took = ", ".join(f"{task} {result['seconds']:.1f}s" for task, result in tasks.items())
        print(f"{name}: load {load_s:.1f}s; {took}; load avg {load_before} -> {load()}", flush=True)

    header = f"{'engine':<10} {'task':<6} {'metric':<29} {'value':>7} {'stderr':>7} {'n':>4} {'seconds':>8}  gate vs {names[0]}"
    print("\n" + header + "\n" + "-" * len(header))
    for engine, task, metric, value, stderr, n, seconds, gate in rows:
        err = f"{stderr:.4f}" if stderr is not None else "n/a"
        print(f"{engine:<10} {task:<6} {metric:<29} {value:>7.4f} {err:>7} {n:>4} {seconds:>8.1f}  {gate}")
    if timing:
        base_s = timing[0][1]
        header = (f"{'engine':<10} {'MMLU s':>8} {'vs ' + names[0]:>14} {'acc':>7} {'n':>4} "
                  f"{'max |dlogp| vs ' + names[0]:>26} {'answers differ':>14} {'load s':>7}  load avg 1/5/15 m before -> after")  # fmt: skip
        print("\n" + header + "\n" + "-" * len(header))
        for name, seconds, acc, n, diff, flips, load_s, before, after in timing:
            print(f"{name:<10} {seconds:>8.1f} {base_s / seconds:>13.2f}x {acc:>7.4f} {n:>4} {diff:>26.2e} "
                  f"{flips:>14} {load_s:>7.1f}  {before} -> {after}")  # fmt: skip


if __name__ == "__main__":
    main()
