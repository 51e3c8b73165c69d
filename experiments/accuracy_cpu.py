"""Accuracy of SmolLM2-135M-Instruct through our engines on CPU: MMLU and GSM8K, 5-shot.

MMLU: a fixed stratified subset, the first --mmlu-per-subject test questions of
--subjects-per-category subjects from each of lm-eval's four categories (evenly spaced
in alphabetical order). GSM8K: the first --gsm8k test problems. Data from --data-dir
(the original releases; default: shared/data beside the checkout), else the HF hub.
The first engine is the baseline of the others for the 99% gate.

    .venv/bin/python experiments/accuracy_cpu.py --engines hf,own
"""

from __future__ import annotations

import argparse
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
from harness.eval import EvalConfig, GSM8KConfig, MMLUConfig, evaluate  # noqa: E402
from harness.eval.baseline import compare  # noqa: E402
from harness.eval.tasks import mmlu_categories  # noqa: E402
from harness.models import embedded_model_dir  # noqa: E402


def stratified_subjects(per_category: int) -> list[str]:
    chosen = []
    for subjects in mmlu_categories().values():
        count = min(per_category, len(subjects))  # more than a category has: all of it
        step = len(subjects) / count
        chosen += [subjects[int(i * step)] for i in range(count)]
    return sorted(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="hf,own")
    parser.add_argument("--subjects-per-category", type=int, default=3)
    parser.add_argument("--mmlu-per-subject", type=int, default=2)
    parser.add_argument("--gsm8k", type=int, default=8, help="GSM8K test problems (0 = skip)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for samples_<task>.jsonl (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    subjects = stratified_subjects(args.subjects_per_category)
    data_dir = args.data_dir if Path(args.data_dir).is_dir() else None
    cfg = EvalConfig(
        mmlu=MMLUConfig(limit=args.mmlu_per_subject, subjects=subjects) if args.mmlu_per_subject else None,
        gsm8k=GSM8KConfig(limit=args.gsm8k) if args.gsm8k else None,
        data_dir=data_dir,
        batch_size=args.batch_size,
    )
    model = ModelSpec(name="smollm2-135m", path=str(embedded_model_dir()), dtype="float32")
    out_root = Path(args.out or tempfile.mkdtemp(prefix="accuracy_cpu-"))
    print(f"MMLU subjects ({len(subjects)}): {', '.join(subjects)}", flush=True)
    print(f"data: {data_dir or 'hub'}; torch threads {args.threads}; samples under {out_root}", flush=True)

    rows, baseline = [], None
    for name in args.engines.split(","):
        start = time.perf_counter()
        engine = create_engine(name, model, Technique(), {}, "cpu")
        load_s = time.perf_counter() - start
        try:
            block = evaluate(cfg, engine, model, out_root / name, None)
        finally:
            engine.close()
        _, gate = compare(block["tasks"], baseline, cfg.gate_ratio)
        baseline = baseline or {"accuracy": block, "result_path": name}
        for task, result in block["tasks"].items():
            for metric, value in result["metrics"].items():
                rows.append((name, task, metric, value["value"], value["stderr"], result["n_samples"],
                             result["seconds"], gate["status"]))
        print(f"{name}: engine load {load_s:.1f}s", flush=True)

    header = f"{'engine':<7} {'task':<6} {'metric':<29} {'value':>7} {'stderr':>7} {'n':>4} {'seconds':>8}  gate vs {args.engines.split(',')[0]}"
    print("\n" + header + "\n" + "-" * len(header))
    for engine, task, metric, value, stderr, n, seconds, gate in rows:
        err = f"{stderr:.4f}" if stderr is not None else "n/a"
        print(f"{engine:<7} {task:<6} {metric:<29} {value:>7.4f} {err:>7} {n:>4} {seconds:>8.1f}  {gate}")


if __name__ == "__main__":
    main()
