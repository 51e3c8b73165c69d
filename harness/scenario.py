"""The two offline scenarios: latency (a fixed batch, fixed lengths) and throughput (many
requests of seeded lengths at once). Both run warm-ups, then measured repeats; each repeat
gets fresh prompts from the same seeded generator, so every run is reproducible and no repeat
hits a prefix cache filled by an earlier one."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from engines.base import Engine, RequestOutput
from harness.config import ScenarioConfig, WorkloadConfig
from harness.workload import Workload, requests, synthesize


WARMUP_SEED = 1_000_000  # warm-up prompts come from seeds no measured repeat uses


@dataclass(slots=True)
class Measurement:
    runs: list[list[RequestOutput]]  # one list of outputs per measured repeat
    workloads: list[Workload]
    memory: dict


def measure(
    engine: Engine,
    scenario: ScenarioConfig,
    workload_cfg: WorkloadConfig,
    vocab_size: int,
    special_ids: set[int],
    device: str,
) -> Measurement:
    n = scenario.requests_per_repeat

    def run(index: int, label: str) -> tuple[Workload, list[RequestOutput]]:
        workload = synthesize(workload_cfg, n, vocab_size, special_ids, seed=index)
        with tqdm(total=n, desc=label, unit="req", leave=False) as bar:
            outputs = engine.generate(requests(workload, workload_cfg, f"r{index}"), progress=bar.update)
        return workload, outputs

    for w in range(scenario.warmup):
        run(WARMUP_SEED + w, f"warm-up {w + 1}/{scenario.warmup}")
    runs, workloads = [], []
    with engine.memory_monitor(device) as memory:
        for r in range(scenario.repeats):
            workload, outputs = run(r, f"measure {r + 1}/{scenario.repeats}")
            failed = [o for o in outputs if o.finish_reason == "error"]
            if failed:
                raise RuntimeError(f"{len(failed)}/{len(outputs)} requests failed, e.g. {failed[0].error}")
            runs.append(outputs)
            workloads.append(workload)
    return Measurement(runs=runs, workloads=workloads, memory=memory.result())
