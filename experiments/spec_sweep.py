"""Speculative decoding sweep: spec in {none, draft, ngram, early_exit} x k on batch-1 workloads, one table.

Workloads (batch 1, greedy, ignore_eos, prefix cache off so the warm-up run does not serve the prompt):
- `random`: the harness's seeded random-token prompt (its latency scenario's kind of input). n-gram lookup
  has nothing to find in random tokens: this shows what speculation costs when drafts are rejected.
- `gsm8k`: a 3-shot GSM8K prompt of real text (train worked solutions, then a test question); the answer
  repeats the question's numbers and its own `<<a*b=c>>c` annotations, where n-gram lookup can shine.

Per round every config runs once, in the same order (interleaved), on a freshly built engine after a short
warm-up; decode speedup = decode time (first to last token: what speculation changes) of spec=none / that of
the config in the same round; the table gives the mean over rounds with a 95% t-interval, and the load
average seen. The draft model is the target cut to its first
--draft-layers layers, the early-exit self-draft uses --exit-layer layers.

    flock /work/wt/bench.lock .venv/bin/python experiments/spec_sweep.py --rounds 3
    .venv/bin/python experiments/spec_sweep.py --gpu   # Llama-3.1-8B-shaped random weights, bf16, cost side only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy.stats import t as student_t  # noqa: E402

from engines import create_engine  # noqa: E402
from engines.base import ModelSpec, Request, SamplingParams, Spec, Technique  # noqa: E402
from harness.models import embedded_model_dir  # noqa: E402

DATA = Path(os.environ.get("INFERMATRIX_DATA", "/work/shared/data"))


def gsm8k_prompt(tokenizer, shots: int = 3, question: int = 0) -> list[int]:
    read = lambda name: [json.loads(line) for line in (DATA / "gsm8k" / name).read_text().splitlines()]  # noqa: E731
    train, test = read("train.jsonl")[:shots], read("test.jsonl")[question]
    text = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in train)
    return tokenizer(text + f"Question: {test['question']}\nAnswer:")["input_ids"]


def random_prompt(vocab_size: int, length: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (length,), generator=gen).tolist()  # above the special ids


def configs(ks: list[int], draft_layers: int, exit_layer: int) -> list[tuple[str, Technique]]:
    out = [("none", Technique(spec=Spec.none, prefix_cache=False))]
    for k in ks:
        out.append((f"draft k={k}", Technique(spec=Spec.draft, spec_k=k, spec_draft_layers=draft_layers, prefix_cache=False)))
        out.append((f"ngram k={k}", Technique(spec=Spec.ngram, spec_k=k, spec_ngram_min=1, spec_ngram_max=4,
                                              prefix_cache=False)))  # fmt: skip
        out.append((f"early_exit k={k}", Technique(spec=Spec.early_exit, spec_k=k, spec_exit_layer=exit_layer,
                                                   prefix_cache=False)))  # fmt: skip
    return out


def measure(spec: ModelSpec, technique: Technique, prompt: list[int], new_tokens: int, device: str) -> dict:
    engine = create_engine("own", spec, technique, {"max_num_seqs": 1, "max_model_len": len(prompt) + new_tokens + 16,
                                                    "max_num_batched_tokens": 2048}, device)  # fmt: skip
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    engine.generate([Request("warm", prompt[:32], SamplingParams(max_tokens=12, ignore_eos=True))])  # first-call costs
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = engine.generate([Request("r", prompt, params)])[0]
    elapsed = time.perf_counter() - start
    spec_stats = engine.stats().get("speculation") or {}
    engine.close()
    times = out.token_times
    return {"s": elapsed, "tokens": out.token_ids, "ttft_ms": 1e3 * (times[0] - out.arrival_time),
            "decode_s": times[-1] - times[0], "tpot_ms": 1e3 * (times[-1] - times[0]) / (len(times) - 1),
            "spec": spec_stats, "load": os.getloadavg()[0]}  # fmt: skip


def interval(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = student_t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def spec_mean(runs: list[dict], key: str) -> float | None:
    values = [r["spec"].get(key) for r in runs]
    return None if any(v is None for v in values) else statistics.fmean(values)


def table(results: dict[tuple[str, str], list[dict]], workloads: list[str], names: list[str]) -> str:
    head = (f"{'workload':8} {'config':15} {'accept':>6} {'acc.len':>7} {'tok/step':>8} {'draft ms':>8} {'verify ms':>9} "
            f"{'TTFT s':>6} {'TPOT ms':>8} {'decode speedup [95% CI]':>23} {'e2e x':>6} {'load avg':>11} {'same':>4}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for w in workloads:
        base = results[(w, "none")]
        for name in names:
            runs = results[(w, name)]
            speed = interval([b["decode_s"] / r["decode_s"] for b, r in zip(base, runs)])
            e2e = statistics.fmean(b["s"] / r["s"] for b, r in zip(base, runs))
            loads = [r["load"] for r in runs]
            same = all(r["tokens"] == b["tokens"] for b, r in zip(base, runs))
            mean = lambda key, runs=runs: spec_mean(runs, key)  # noqa: E731
            ms = lambda key, runs=runs: None if (v := spec_mean(runs, key)) is None else 1e3 * v  # noqa: E731
            lines.append(
                f"{w:8} {name:15} {fmt(mean('acceptance_rate')):>6} {fmt(mean('mean_accepted_length')):>7} "
                f"{fmt(mean('tokens_per_decode_step')):>8} {fmt(ms('draft_s_per_step'), '.1f'):>8} "
                f"{fmt(ms('verify_s_per_step'), '.1f'):>9} {statistics.fmean(r['ttft_ms'] for r in runs) / 1e3:6.2f} "
                f"{statistics.fmean(r['tpot_ms'] for r in runs):8.1f} "
                f"{speed[0]:9.2f}x [{speed[1]:.2f}, {speed[2]:.2f}] {e2e:5.2f}x {min(loads):5.1f}-{max(loads):<5.1f} "
                f"{'yes' if same else 'NO':>4}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--random-prompt-len", type=int, default=128)
    parser.add_argument("--draft-layers", type=int, default=None, help="default: 8 (CPU), 2 (--gpu)")
    parser.add_argument("--exit-layer", type=int, default=None, help="default: 24 (CPU), 8 (--gpu)")
    parser.add_argument("--workloads", nargs="+", default=["random", "gsm8k"], choices=["random", "gsm8k"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--gpu", action="store_true", help="Llama-3.1-8B-shaped random weights on CUDA (cost side)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    if args.gpu:  # random weights: acceptance means nothing; draft and verify time per k are the point
        import yaml

        arch = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf/model/llama-3.1-8b.yaml").read_text())["architecture"]
        spec = ModelSpec("llama-3.1-8b-random", None, dtype="bfloat16", random_config=arch, seed=0)
        args.workloads = ["random"]
        tokenizer = None
    else:
        from transformers import AutoTokenizer

        spec = ModelSpec("smollm2-135m", str(embedded_model_dir()), dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    draft_layers = args.draft_layers or (2 if args.gpu else 8)
    exit_layer = args.exit_layer or (8 if args.gpu else 24)
    vocab = spec.random_config["vocab_size"] if spec.is_random else tokenizer.vocab_size
    prompts = {"random": random_prompt(vocab, args.random_prompt_len), "gsm8k": gsm8k_prompt(tokenizer) if tokenizer else None}
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} device={device} dtype={spec.dtype} "
          f"model={spec.name} draft=target's first {draft_layers} layers, early_exit={exit_layer} layers, "
          f"new_tokens={args.new_tokens} batch=1 greedy, load avg {os.getloadavg()}")  # fmt: skip
    for w in args.workloads:
        print(f"workload {w}: prompt {len(prompts[w])} tokens")
    cells = configs(args.k, draft_layers, exit_layer)
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for w in args.workloads:
            for name, technique in cells:
                res = measure(spec, technique, prompts[w], args.new_tokens, device)
                results.setdefault((w, name), []).append(res)
                print(f"round {r} {w:6} {name:15} {res['s']:7.2f} s  load {res['load']:.2f}", flush=True)
    print()
    print(table(results, args.workloads, [n for n, _ in cells]))
    print("accept = accepted / proposed drafts; acc.len = 1 + accepted / drafts (vLLM's mean acceptance length, "
          "bonus token counted); tok/step = tokens per decode step including steps with no draft (n-gram misses); "
          "draft/verify ms = per engine step; decode speedup = decode time (first to last token) of none / this config, "
          "paired per round, mean and 95% t-interval over rounds; e2e x = the same for end-to-end time (prefill included); "
          "same = greedy tokens identical to none in every round")  # fmt: skip


if __name__ == "__main__":
    main()
