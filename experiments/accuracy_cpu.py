"""Accuracy of SmolLM2-135M-Instruct through our engines on CPU, timed against lm-eval's own HF backend.

MMLU: a fixed subset, the first --mmlu-per-subject test questions of --subjects-per-category subjects
from each of lm-eval's four categories (evenly spaced in alphabetical order; 0 = all 57 subjects).
GSM8K: the first --gsm8k test problems. Data from --data-dir (the original releases; default:
shared/data beside the checkout; `hub` = the HF hub). `lm-eval-hf` in --engines is lm-eval's HFLM
(what `lm_eval --model hf --model_args pretrained=<folder>,device=cpu,dtype=float32` builds) run on
the same generated task YAMLs through the same simple_evaluate call as our engines, in this process.
The first engine is the baseline of the others for the 99% gate and for per-choice log-likelihoods.
An engine may carry options after colons (`own:fp32_on_amx=true`): the same engine in two settings, one run.

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


def engine_options(name: str) -> tuple[str, dict]:
    """`own:fp32_on_amx=true:max_num_seqs=8` -> ("own", {"fp32_on_amx": True, "max_num_seqs": 8})."""
    engine, *options = name.split(":")
    values = {"true": True, "false": False}
    pairs = [item.split("=", 1) for item in options]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--engines: '{name}': options go as engine:key=value:key=value")
    return engine, {k: values.get(v, int(v) if v.isdigit() else v) for k, v in pairs}


def open_lm(name: str, model: ModelSpec, batch_size: int, lm_eval_batch_size: int) -> tuple[object, object | None]:
    """(lm-eval model, our engine to close or None)."""
    if name == LM_EVAL_HF:
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model.path, device="cpu", dtype=model.dtype, batch_size=lm_eval_batch_size), None
    engine, options = engine_options(name)
    engine = create_engine(engine, model, Technique(), options, "cpu")
    return EngineLM(engine, model.path, batch_size=batch_size), engine


def choice_logprobs(path: str) -> dict[tuple[str, int], list[float]]:
    """(task, doc_id) -> the log-likelihood of each answer choice, from a samples_<task>.jsonl."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return {(row["task"], row["doc_id"]): [float(choice[0][0]) for choice in row["responses"]] for row in rows}


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def merged(blocks: list[dict]) -> dict:
    """One task's result over several rounds (disjoint subject slices): seconds and samples add up, each
    metric is the sample-weighted mean (lm-eval's MMLU group weights subjects by size); stderr is not
    recombined."""
    n = sum(b["n_samples"] for b in blocks)
    metrics = {key: {"value": sum(b["metrics"][key]["value"] * b["n_samples"] for b in blocks) / n,
                     "stderr": blocks[0]["metrics"][key]["stderr"] if len(blocks) == 1 else None}
               for key in blocks[0]["metrics"]}  # fmt: skip
    return {"metrics": metrics, "n_samples": n, "seconds": sum(b["seconds"] for b in blocks),
            "samples_paths": [b["samples_path"] for b in blocks]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="hf,own",
                        help=f"comma-separated: hf, own, ..., {LM_EVAL_HF}; engine options after colons, e.g. "
                             "own:fp32_on_amx=true")  # fmt: skip
    parser.add_argument("--subjects-per-category", type=int, default=3, help="0 = all 57 subjects")
    parser.add_argument("--mmlu-per-subject", type=int, default=2)
    parser.add_argument("--gsm8k", type=int, default=8, help="GSM8K test problems (0 = skip)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="or 'hub'")
    parser.add_argument("--batch-size", type=int, default=16, help="our engines: sequences per score call")
    parser.add_argument("--lm-eval-batch-size", type=int, default=1, help="lm-eval's HFLM (its CLI default: 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleave: split the subjects into this many slices and run every engine on "
                             "each slice before the next (the order rotates), so load changes hit all alike")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for samples_<task>.jsonl (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data_dir != "hub" and not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder (use --data-dir hub for the HF hub)")
    data_dir = None if args.data_dir == "hub" else args.data_dir

    subjects = stratified_subjects(args.subjects_per_category)
    slices = [subjects[r :: args.rounds] for r in range(args.rounds)]
    model = ModelSpec(name="smollm2-135m", path=str(embedded_model_dir()), dtype="float32")
    rounds = []
    for r, part in enumerate(slices):
        cfg = EvalConfig(
            mmlu=MMLUConfig(limit=args.mmlu_per_subject, subjects=part) if args.mmlu_per_subject and part else None,
            gsm8k=GSM8KConfig(limit=args.gsm8k) if args.gsm8k and r == 0 else None,
            data_dir=data_dir,
            batch_size=args.batch_size,
        )
        plans, task_dir = check_inputs(cfg, model)  # before anything is timed: bad data fails here
        rounds.append((cfg, plans, task_manager(str(task_dir))))
    out_root = Path(args.out or tempfile.mkdtemp(prefix="accuracy_cpu-"))
    names = args.engines.split(",")
    print(f"MMLU subjects ({len(subjects)}): {', '.join(subjects)}", flush=True)
    print(f"data: {data_dir or 'hub'}; torch threads {args.threads} (OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}); dtype {model.dtype}; our batch {args.batch_size}"
          f" sequences/call; {LM_EVAL_HF} batch {args.lm_eval_batch_size}; {args.rounds} round(s); "
          f"samples under {out_root}", flush=True)  # fmt: skip

    lms, load_s = {}, {}
    for name in names:
        start = time.perf_counter()
        lms[name] = open_lm(name, model, args.batch_size, args.lm_eval_batch_size)
        load_s[name] = time.perf_counter() - start
        engine = lms[name][1]
        if engine is not None and (linears := engine.stats().get("linear_instructions")):
            print(f"{name}: linears on {linears}", flush=True)
    blocks: dict[str, dict[str, list[dict]]] = {name: {} for name in names}
    try:
        for r, (cfg, plans, manager) in enumerate(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                before = load()
                out = out_root / name / f"round{r}"
                out.mkdir(parents=True, exist_ok=True)
                for plan in plans:
                    block = run_task(plan, lms[name][0], manager, cfg, out)
                    blocks[name].setdefault(plan.name, []).append(block)
                    print(f"round {r} {name} {plan.name}: {block['n_samples']} items, {block['seconds']:.1f}s, "
                          f"load avg {before} -> {load()}", flush=True)  # fmt: skip
        context_tokens = {name: (stats["prefix_cache_lookup_tokens"], stats["prefix_cache_hit_tokens"])
                          for name, (_, engine) in lms.items() if engine is not None
                          for stats in [engine.stats()] if "prefix_cache_lookup_tokens" in stats}  # fmt: skip
    finally:
        for _, engine in lms.values():
            if engine is not None:
                engine.close()

    rows, timing, baseline, reference = [], [], None, {}
    for name in names:
        tasks = {task: merged(parts) for task, parts in blocks[name].items()}
        _, gate = compare(tasks, baseline, EvalConfig().gate_ratio)
        baseline = baseline or {"accuracy": {"tasks": tasks}, "result_path": name}
        for task, result in tasks.items():
            for metric, value in result["metrics"].items():
                rows.append((name, task, metric, value["value"], value["stderr"], result["n_samples"],
                             result["seconds"], gate["status"]))  # fmt: skip
        if "mmlu" in tasks:
            mine = {k: v for path in tasks["mmlu"]["samples_paths"] for k, v in choice_logprobs(path).items()}
            reference = reference or mine
            diff = max(abs(a - b) for key, choices in mine.items() for a, b in zip(choices, reference[key]))
            flips = sum(max(range(4), key=c.__getitem__) != max(range(4), key=reference[k].__getitem__)
                        for k, c in mine.items())  # fmt: skip
            timing.append((name, tasks["mmlu"]["seconds"], tasks["mmlu"]["metrics"]["acc,none"]["value"],
                           tasks["mmlu"]["n_samples"], diff, flips, load_s[name]))  # fmt: skip

    w = max(10, *map(len, names))  # the engine column
    header = (f"{'engine':<{w}} {'task':<6} {'metric':<29} {'value':>7} {'stderr':>7} {'n':>4} {'seconds':>8}  "
              f"gate vs {names[0]}")  # fmt: skip
    print("\n" + header + "\n" + "-" * len(header))
    for engine, task, metric, value, stderr, n, seconds, gate in rows:
        err = f"{stderr:.4f}" if stderr is not None else "n/a"
        print(f"{engine:<{w}} {task:<6} {metric:<29} {value:>7.4f} {err:>7} {n:>4} {seconds:>8.1f}  {gate}")
    if timing:
        base_s = timing[0][1]
        header = (f"{'engine':<{w}} {'MMLU s':>8} {'speed vs ' + names[0]:>20} {'acc':>7} {'n':>4} "
                  f"{'max |dlogp| vs ' + names[0]:>26} {'answers differ':>14} {'load s':>7}")  # fmt: skip
        print("\n" + header + "\n" + "-" * len(header))
        for name, seconds, acc, n, diff, flips, loaded in timing:
            print(f"{name:<{w}} {seconds:>8.1f} {base_s / seconds:>19.2f}x {acc:>7.4f} {n:>4} {diff:>26.2e} "
                  f"{flips:>14} {loaded:>7.1f}")  # fmt: skip
        print(f"load average at the end (1/5/15 min): {load()}; per-round load averages above")
    for name, tokens in context_tokens.items():  # why an engine that shares prefixes can be faster
        looked_up, cached = tokens
        print(f"{name}: {looked_up} context tokens scored, {cached} of them read from the prefix cache, "
              f"{looked_up - cached} computed: {looked_up / max(looked_up - cached, 1):.2f}x fewer than a "
              f"backend that computes every context in full")  # fmt: skip


if __name__ == "__main__":
    main()
