"""Results of made-up cells for report tests: each goes through record.table_row like a measured one."""

from __future__ import annotations

from pathlib import Path

from harness import record

CPU = {"device": "cpu", "cpu_model": "Test CPU", "usable_cores": 2, "logical_cores": 2}


def result(experiment: str, technique: dict, tok_s: float, tpot_ms: float, *, status: str = "ok", n: int = 3,
           cv: float = 0.02, engine: str = "own", input_len: int = 512, reason: str | None = None,
           extra: dict | None = None) -> dict:  # fmt: skip
    """One cell's result.json as the runner writes it (the fields a report reads)."""
    name = ",".join(f"{k}={v}" for k, v in technique.items())
    out = {"cell": f"{engine}/smollm2-135m/latency/fixed/{name}/in={input_len}", "status": status, "reason": reason,
           "config_hash": f"h-{experiment}-{name}-{input_len}-{engine}", "sweep_id": f"sweep-{experiment}",
           "code_version": "test", "hardware": CPU, "hardware_id": "hw1", "load_average": [0.5, 0.5, 0.5],
           "config": {"engine": {"name": engine}, "model": {"name": "smollm2-135m", "dtype": "float32"},
                      "scenario": {"name": "latency"}, "experiment": {"name": experiment},
                      "workload": {"name": "fixed", "input_len": {"dist": "fixed", "mean": input_len},
                                   "output_len": {"dist": "fixed", "mean": 32}}},
           "technique_applied": technique}  # fmt: skip
    if status == "ok":
        out["metrics"] = {"output_throughput_tok_s": tok_s, "tpot_ms": {"mean": tpot_ms}, "ttft_ms": {"mean": 50.0},
                          "e2el_ms": {"mean": 50.0 + 31 * tpot_ms}, "peak_memory_bytes": 600_000_000}  # fmt: skip
        out["ci95"] = {key: {"n": n, "method": "student-t", "mean": value, "low": value * (1 - 2.5 * cv),
                             "high": value * (1 + 2.5 * cv), "std": value * cv, "cv": cv, "warning": None}
                       for key, value in (("output_throughput_tok_s", tok_s), ("tpot_ms.mean", tpot_ms))}  # fmt: skip
    out.update(extra or {})
    return out


def write_table(path: Path, results: list[dict]) -> Path:
    for res in results:
        record.append_row(path, record.table_row(res, path.parent / res["cell"] / "result.json"))
    return path
