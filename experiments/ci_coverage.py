"""How often a nominal 95% interval over n repeats covers the true mean, on simulated normal repeats.

Compares the percentile bootstrap the harness used before (2,000 resamples of the n repeat values)
with the Student-t interval it uses now (`harness.metrics.student_t_interval`). Seeded: the same
numbers every run.

    .venv/bin/python experiments/ci_coverage.py               # 4,000 trials per n
    .venv/bin/python experiments/ci_coverage.py --trials 20000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.metrics import student_t_interval  # noqa: E402

NS = (2, 3, 5, 10)
TRUE_MEAN, TRUE_STD = 100.0, 5.0


def bootstrap_intervals(samples: np.ndarray, rng: np.random.Generator, resamples: int = 2000) -> np.ndarray:
    """The old method, vectorised over trials: percentile bootstrap of the mean, [trials, 2]."""
    trials, n = samples.shape
    picks = rng.integers(0, n, size=(trials, resamples, n))
    means = np.take_along_axis(samples[:, None, :], picks, axis=2).mean(axis=2)
    return np.quantile(means, [0.025, 0.975], axis=1).T


def coverage(ns: tuple[int, ...] = NS, trials: int = 4000, seed: int = 0) -> dict[int, dict[str, float]]:
    """{n: {"bootstrap": fraction covered, "student-t": fraction covered}} over `trials` simulated cells."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in ns:
        samples = rng.normal(TRUE_MEAN, TRUE_STD, size=(trials, n))
        chunks = np.array_split(samples, max(1, trials // 250))  # bounds the [trials, resamples, n] array
        boot = np.concatenate([bootstrap_intervals(chunk, rng) for chunk in chunks])
        t_blocks = [student_t_interval(row) for row in samples]
        t_low = np.array([b["low"] for b in t_blocks])
        t_high = np.array([b["high"] for b in t_blocks])
        out[n] = {
            "bootstrap": float(np.mean((boot[:, 0] <= TRUE_MEAN) & (TRUE_MEAN <= boot[:, 1]))),
            "student-t": float(np.mean((t_low <= TRUE_MEAN) & (TRUE_MEAN <= t_high))),
        }
    return out


def table(results: dict[int, dict[str, float]], trials: int) -> str:
    lines = [f"coverage of a nominal 95% interval of the mean, normal repeats, {trials} trials per n",
             f"{'n':>3}  {'percentile bootstrap (old)':>26}  {'student-t (new)':>15}"]  # fmt: skip
    lines += [f"{n:>3}  {r['bootstrap']:>26.1%}  {r['student-t']:>15.1%}" for n, r in results.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(table(coverage(trials=args.trials, seed=args.seed), args.trials))


if __name__ == "__main__":
    main()
