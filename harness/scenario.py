"""The two offline scenarios, latency (a fixed batch, fixed lengths) and throughput (many
requests of seeded lengths at once), and the online one, serving (requests of seeded lengths
arriving over time on a seeded schedule, through engine.serve; only the measured window of each
run, without its warm-up and cool-down requests, is kept). All run warm-ups, then measured repeats (`repeats`, and
more until the measured runs add up to `min_duration_s`); each repeat gets fresh prompts from
the same seeded generator, so every run is reproducible and no repeat hits a prefix cache
filled by an earlier one. Every run, warm-ups too, must produce what was asked: a failed or
truncated request fails the cell."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from engines.base import Arrivals, Engine, Request, RequestOutput
from harness.arrivals import arrival_offsets, describe_schedule
from harness.config import ScenarioConfig, ScenarioName, WorkloadConfig
from harness.energy import EnergyMeter
from harness.metrics import run_duration
from harness.workload import Workload, requests, synthesize


WARMUP_SEED = 1_000_000  # warm-up prompts come from seeds no measured repeat uses


@dataclass(slots=True)
class Measurement:
    runs: list[list[RequestOutput]]  # one list of outputs per measured repeat (serving: its measured window)
    workloads: list[Workload]
    memory: dict
    energy: dict  # joules over the measured repeats (harness/energy.py), or why none was readable
    schedules: list[dict] | None = None  # serving: each repeat's arrival schedule (hash, span, realised rate)


class IncompleteRun(RuntimeError):
    """A run whose requests failed or ended before the length they asked for."""


def check_outputs(label: str, reqs: list[Request], outputs: list[RequestOutput]) -> None:
    """Raise IncompleteRun unless every request produced its tokens: under ignore_eos exactly
    max_tokens; otherwise max_tokens or fewer ending at a stop token. A request cut short (by the
    model's context, say) would be timed as a shorter request than the workload records."""
    failed = [o for o in outputs if o.finish_reason == "error"]
    if failed:
        raise IncompleteRun(f"{label}: {len(failed)}/{len(outputs)} requests failed, e.g. {failed[0].error}")
    short = [
        (req, out) for req, out in zip(reqs, outputs)
        if len(out.token_ids) < req.sampling.max_tokens and (req.sampling.ignore_eos or out.finish_reason != "stop")
    ]  # fmt: skip
    if short:
        req, out = short[0]
        wanted, prompt = req.sampling.max_tokens, len(req.prompt_token_ids)
        raise IncompleteRun(
            f"{label}: request {req.request_id} got {len(out.token_ids)} of {wanted} tokens "
            f"(finish_reason={out.finish_reason}, ignore_eos={req.sampling.ignore_eos}); "
            f"{len(short)}/{len(outputs)} requests truncated. Prompt {prompt} + {wanted} output = "
            f"{prompt + wanted} tokens: does that exceed the model's context (max_model_len / "
            "max_position_embeddings)? Shorten workload.input_len or workload.output_len"
        )


def measure(
    engine: Engine,
    scenario: ScenarioConfig,
    workload_cfg: WorkloadConfig,
    vocab_size: int,
    special_ids: set[int],
    device: str,
) -> Measurement:
    n = scenario.requests_per_repeat
    serving = scenario.name is ScenarioName.serving
    schedules: list[dict] = []

    def run(index: int, label: str) -> tuple[Workload, list[RequestOutput]]:
        workload = synthesize(workload_cfg, n, vocab_size, special_ids, seed=index)
        reqs = requests(workload, workload_cfg, f"r{index}")
        with tqdm(total=n, desc=label, unit="req", leave=False) as bar:
            if serving:
                offsets = arrival_offsets(n, scenario.request_rate, scenario.arrival, scenario.burstiness,
                                          workload_cfg.seed, index)  # fmt: skip
                schedules.append(describe_schedule(offsets))
                outputs = engine.serve(reqs, Arrivals(offsets, scenario.max_concurrency), progress=bar.update)
            else:
                outputs = engine.generate(reqs, progress=bar.update)
        check_outputs(label, reqs, outputs)
        workload.generated_lens = [len(o.token_ids) for o in outputs]
        return workload, outputs[scenario.measured_window]

    for w in range(scenario.warmup):
        run(WARMUP_SEED + w, f"warm-up {w + 1}/{scenario.warmup}")
    schedules.clear()  # only the measured repeats' schedules are recorded
    runs, workloads = [], []
    measured_s = 0.0
    with engine.memory_monitor(device) as memory, EnergyMeter(device) as energy:
        while len(runs) < scenario.repeats or measured_s < scenario.min_duration_s:
            r = len(runs)
            label = f"measure {r + 1}/{scenario.repeats}"
            if r >= scenario.repeats:
                label = f"measure {r + 1} ({measured_s:.1f} s of min_duration_s={scenario.min_duration_s:g})"
            workload, outputs = run(r, label)
            runs.append(outputs)
            workloads.append(workload)
            measured_s += run_duration(outputs)  # the durations throughput divides by
    generated = sum(sum(w.generated_lens) for w in workloads)  # every token made in the span, warm-up requests of a serving run too
    return Measurement(runs=runs, workloads=workloads, memory=memory.result(), energy=energy.result(generated),
                       schedules=schedules if serving else None)  # fmt: skip
