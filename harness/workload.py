"""Seeded synthetic prompts of exact token lengths (like vLLM's random dataset).

Prompts are random token ids drawn from the vocabulary minus special tokens, so a length in
the config is the length the engine sees; with ignore_eos every request generates exactly its
output length. The same seed, lengths and vocabulary give the same workload and hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from engines.base import Request, SamplingParams
from harness.config import LengthDist, Lengths, WorkloadConfig


@dataclass(slots=True)
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]  # planned (the requests' max_tokens)
    seed: int
    generated_lens: list[int] | None = None  # what the engine produced, once run

    @property
    def hash(self) -> str:
        payload = json.dumps({"prompts": self.prompts, "output_lens": self.output_lens}, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """Hash, seed and length summaries: input, planned output, and generated output once run."""
        ins = np.asarray([len(p) for p in self.prompts])
        outs = np.asarray(self.output_lens)
        described = {
            "hash": self.hash,
            "seed": self.seed,
            "num_requests": len(self.prompts),
            "input_len": {"mean": float(ins.mean()), "min": int(ins.min()), "max": int(ins.max())},
            "output_len": {"mean": float(outs.mean()), "min": int(outs.min()), "max": int(outs.max())},
        }
        if self.generated_lens is not None:
            got = np.asarray(self.generated_lens)
            described["generated_len"] = {"mean": float(got.mean()), "min": int(got.min()), "max": int(got.max())}
        return described


def sample_lengths(spec: Lengths, n: int, rng: np.random.Generator) -> list[int]:
    if spec.dist is LengthDist.fixed:
        return [spec.mean] * n
    if spec.dist is LengthDist.uniform:
        return rng.integers(spec.low, spec.high + 1, size=n).tolist()
    drawn = np.rint(rng.normal(spec.mean, spec.std, size=n))
    return np.clip(drawn, spec.low, spec.high).astype(int).tolist()


def synthesize(cfg: WorkloadConfig, num_requests: int, vocab_size: int, special_ids: set[int], seed: int) -> Workload:
    """`seed` is separate from cfg.seed so warm-up and each repeat get fresh prompts (a prefix
    cache must not turn repeat 2 into a cache hit of repeat 1). With shared_prefix_len, every prompt
    of the run is that shared prefix followed by its own input_len tokens."""
    rng = np.random.default_rng([cfg.seed, seed])
    allowed = np.setdiff1d(np.arange(vocab_size), np.fromiter(special_ids, dtype=np.int64))
    in_lens = sample_lengths(cfg.input_len, num_requests, rng)
    out_lens = sample_lengths(cfg.output_len, num_requests, rng)
    shared = rng.choice(allowed, size=cfg.shared_prefix_len).tolist()  # fresh per run, like the rest
    prompts = [shared + rng.choice(allowed, size=n).tolist() for n in in_lens]
    return Workload(prompts=prompts, output_lens=out_lens, seed=seed)


def requests(workload: Workload, cfg: WorkloadConfig, prefix: str) -> list[Request]:
    return [
        Request(
            request_id=f"{prefix}-{i}",
            prompt_token_ids=prompt,
            sampling=SamplingParams(
                max_tokens=out_len, temperature=cfg.temperature, seed=cfg.seed + i, ignore_eos=cfg.ignore_eos
            ),
        )
        for i, (prompt, out_len) in enumerate(zip(workload.prompts, workload.output_lens))
    ]
