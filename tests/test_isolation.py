"""Each cell's engine runs in its own process: a crash, a kill, an exit or a hang in one cell is
recorded as that cell's failure (with the signal or status and the tail of its log) and the
sweep goes on; memory is released between cells."""

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.config import register
from harness.runner import run_cell

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["tracker=none", "scenario.repeats=2", "scenario.warmup=0", "workload.input_len.mean=8",
        "workload.output_len.mean=3", "threads=1"]  # fmt: skip
register()


def fault_cell(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, dict]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["engine=fault", *TINY, f"store={tmp_path / 'store'}", *overrides])
    row = run_cell(cfg, tmp_path / name, tmp_path / "sweep", "sweep-1", len(list(tmp_path.glob("*"))))
    return row, json.loads((tmp_path / name / "result.json").read_text())


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("segfault", "engine process killed by SIGSEGV (11) during generate"),
        ("oom_kill", "engine process killed by SIGKILL (9)"),
        ("exit", "engine process exited with status 3 during generate"),
    ],
)
def test_a_dying_engine_process_fails_only_its_cell_with_the_signal_and_log_tail(tmp_path, fault, reason):
    row, result = fault_cell(tmp_path, "a", f"engine.fault={fault}")
    assert row["status"] == result["status"] == "failed"
    assert reason in result["reason"]
    assert (tmp_path / "a" / "worker.log").is_file()
    if fault == "segfault":  # faulthandler wrote the engine's Python stack into the cell's log
        assert "Segmentation fault" in result["log_tail"] and "engines/fault/engine.py" in result["log_tail"]
    # the harness process lives on: the next cell is measured normally
    row, result = fault_cell(tmp_path, "b")
    assert row["status"] == "ok" and result["metrics"]["total_output_tokens"] == 2 * 3


def test_an_exception_in_the_engine_comes_back_with_its_traceback(tmp_path):
    row, result = fault_cell(tmp_path, "a", "engine.fault=exception", "engine.fault_at=init")
    assert result["reason"] == "RuntimeError: fault engine: injected exception"
    assert "engines/fault/engine.py" in result["traceback"] and "__init__" in result["traceback"]


def test_a_hang_past_cell_timeout_s_is_killed_and_recorded(tmp_path):
    row, result = fault_cell(tmp_path, "a", "engine.fault=hang", "cell_timeout_s=30")
    assert row["status"] == "failed"
    assert "cell timed out (cell_timeout_s=30) during generate; its process was killed" in result["reason"]
    assert "technique_applied" in result and result["environment"]["device"] == "cpu"  # learned before the hang


def test_an_unsupported_technique_found_inside_the_engine_process_is_skipped(tmp_path):
    row, result = fault_cell(tmp_path, "a", "engine=own", "device=cpu", "technique.graphs=cuda_graphs")
    assert row["status"] == "skipped" and "cuda_graphs" in result["reason"]


def test_sweep_with_crashing_cells_records_all_six_and_prints_its_summary(tmp_path):
    faults = "none,exception,segfault,oom_kill,hang,exit"
    cmd = [sys.executable, "-m", "harness.cli", "-m", "engine=fault", f"engine.fault={faults}", "cell_timeout_s=30",
           *TINY, f"store={tmp_path / 'store'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # every cell recorded; some failed
    statuses = [json.loads((tmp_path / "sweep" / str(i) / "result.json").read_text())["status"] for i in range(6)]
    assert statuses == ["ok"] + ["failed"] * 5
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert [r["cell"].rsplit("/", 1)[-1] for r in rows] == ["fixed"] + [f"fault={f}" for f in faults.split(",")[1:]]
    summary = proc.stdout[proc.stdout.index("Sweep summary"):]
    for text in ("injected exception", "SIGSEGV", "SIGKILL", "cell_timeout_s=30", "status 3"):
        assert text in summary
    assert "5 cell(s) failed" in proc.stderr


def test_in_process_cells_release_the_engine_memory_on_close(smollm2_dir):
    from engines import create_engine
    from engines.base import ModelSpec, Technique

    spec = ModelSpec("smollm2-135m", str(smollm2_dir))
    for name, options in (("own", {"kv_cache_bytes": 1 << 24}), ("hf", {})):
        engine = create_engine(name, spec, Technique(), options, "cpu")
        weights = weakref.ref(engine.model.get_input_embeddings().weight if name == "hf" else engine.model.embed)
        engine.close()
        gc.collect()
        assert weights() is None, f"{name}: close() left the weights alive"


def test_engine_python_runs_the_worker_under_another_interpreter_that_sees_only_the_repository(tmp_path):
    other = Path(sys.executable).with_name("python3")  # a different path: treated as another environment
    row, result = fault_cell(tmp_path, "a", f"engine.python={other}")
    assert row["status"] == "ok", result["reason"]
    missing = tmp_path / "no-such-venv" / "bin" / "python"
    row, result = fault_cell(tmp_path, "b", f"engine.python={missing}", "reuse=never")
    assert row["status"] == "failed" and str(missing) in result["reason"]


def test_score_tails_travels_to_the_engine_process_and_back(tmp_path):
    from engines.base import ModelSpec, Technique
    from engines.fault.config import FaultOptions
    from harness.isolation import EngineProcess

    engine = EngineProcess("engines.fault.engine:FaultEngine", ModelSpec("m", None), Technique(), FaultOptions(),
                           "cpu", 1, None, tmp_path / "worker.log", 60.0)  # fmt: skip
    try:
        scored = engine.score_tails([[1, 2, 3, 4], [5, 6]], [2, 1])
        with pytest.raises(Exception, match="tail of sequence 1"):
            engine.score_tails([[1, 2, 3, 4], [5, 6]], [2, 2])
    finally:
        engine.close()
    assert [len(s.logprobs) for s in scored] == [2, 1]


def test_the_cells_openmp_wait_policy_reaches_the_engine_process_before_torch_loads(tmp_path):
    row, result = fault_cell(tmp_path, "active", "omp_wait_policy=ACTIVE")
    assert row["status"] == "ok"
    assert result["threads"]["omp_wait_policy"] == result["threads"]["omp_wait_policy_runtime"] == "ACTIVE"
    row, _ = fault_cell(tmp_path, "bad", "omp_wait_policy=SPIN")
    assert row["status"] == "failed" and "omp_wait_policy must be one of PASSIVE, ACTIVE" in row["reason"]
