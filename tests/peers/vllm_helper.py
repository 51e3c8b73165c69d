"""Run inside the vLLM environment's interpreter (PYTHONPATH = the checkout): one engine start, every check's
engine side, results as JSON. Usage: `python vllm_helper.py JOB.json OUT.json` (see tests/peers/test_vllm.py).

The engine is built the way the cell's worker builds it (`engines.worker.start_engine`), so thread settings and
the environment record are exercised too.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    with open(sys.argv[1]) as fh:
        job = json.load(fh)
    import psutil

    from engines.base import Graphs, ModelSpec, Request, SamplingParams, Technique
    from engines.vllm.config import VllmOptions
    from engines.vllm.engine import VllmEngine
    from engines.worker import start_engine

    out: dict = {}
    started = time.perf_counter()
    engine, facts = start_engine(
        "engines.vllm.engine:VllmEngine", ModelSpec("smollm2", job["model_path"], dtype="float32"),
        VllmEngine.resolve_technique(Technique(graphs=Graphs(job["graphs"]) if job.get("graphs") else None)),
        VllmOptions(**job.get("options", {})), "cpu", job.get("threads"),
    )  # fmt: skip
    out["startup_s"] = time.perf_counter() - started
    out["technique"] = {k: getattr(v, "value", v) for k, v in vars(engine.technique).items()}
    out["threads"] = facts["threads"]
    out["eos_token_id"] = engine.eos_token_id

    def run(name: str, requests: list[Request]) -> None:
        t = time.perf_counter()
        outputs = engine.generate(requests)
        out[name] = [
            {"request_id": o.request_id, "prompt_len": o.prompt_len, "token_ids": o.token_ids,
             "token_times": o.token_times, "arrival_time": o.arrival_time, "finish_reason": o.finish_reason,
             "error": o.error}
            for o in outputs
        ]  # fmt: skip
        out[name + "_s"] = time.perf_counter() - t

    greedy = SamplingParams(max_tokens=job["new_tokens"], ignore_eos=True)
    run("greedy", [Request(f"g{i}", p, greedy) for i, p in enumerate(job["prompts"])])
    run("lengths", [Request(f"l{n}", job["prompts"][i % len(job["prompts"])], SamplingParams(max_tokens=n, ignore_eos=True))
                    for i, n in enumerate(job["lengths"])])  # fmt: skip
    good = job["prompts"][0]
    run("bad", [
        Request("ok-before", good, SamplingParams(max_tokens=4, ignore_eos=True)),
        Request("bad-token", [1, 10**9], SamplingParams(max_tokens=4)),
        Request("bad-max-tokens", good, SamplingParams(max_tokens=0)),
        Request("too-long", [1] * (engine.max_model_len + 5), SamplingParams(max_tokens=4)),
        Request("ok-after", good, SamplingParams(max_tokens=4, ignore_eos=True)),
    ])  # fmt: skip
    stop = job["stop_token"]
    run("stop", [Request("stop", good, SamplingParams(max_tokens=job["new_tokens"], stop_token_ids=(stop,)))])
    out["idle"] = engine.is_idle()
    t = time.perf_counter()
    scored = engine.score(job["score_sequences"])
    out["score_s"] = time.perf_counter() - t
    out["score"] = [{"logprobs": s.logprobs, "is_greedy": s.is_greedy} for s in scored]
    out["stats"] = engine.stats()
    children = [p.pid for p in psutil.Process().children(recursive=True)]
    engine.close()
    out["children_before_close"] = children
    out["alive_after_close"] = [pid for pid in children if psutil.pid_exists(pid)
                                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    with open(sys.argv[2], "w") as fh:
        json.dump(out, fh, default=str)


if __name__ == "__main__":  # vLLM starts its processes with spawn: the guard keeps them from rerunning this
    main()
