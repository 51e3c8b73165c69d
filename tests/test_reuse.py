"""A stored ok result stands in for a new measurement only when the config, the device, the
hardware and (by default) the code version all match; one process at a time measures a cell;
rerunning into a sweep folder keeps one row per job."""

import json
import threading
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from harness import record
from harness.config import register
from harness.runner import run_cell

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ["engine=fault", "tracker=none", "isolation=none", "scenario.repeats=2", "scenario.warmup=0",
        "workload.input_len.mean=8", "workload.output_len.mean=3"]  # fmt: skip
register()


def cell(tmp_path: Path, name: str, *overrides: str, job: int = 0) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*FAST, f"store={tmp_path / 'store'}", *overrides])
    return run_cell(cfg, tmp_path / name, tmp_path / "sweep", "sweep-1", job)


def rewrite_store(tmp_path: Path, **changes: str) -> None:
    """Make the stored rows look as if another machine or another code version measured them."""
    table = tmp_path / "store" / record.TABLE_NAME
    rows = [{**row, **changes} for row in record.read_rows(table)]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))


def measured(row: dict) -> bool:
    return not row.get("reused")


def test_a_result_from_the_same_code_and_hardware_is_reused(tmp_path):
    first = cell(tmp_path, "a")
    again = cell(tmp_path, "b")
    assert measured(first) and not measured(again) and again["result_path"] == first["result_path"]
    assert first["code_version"] and first["hardware_id"] and first["hardware"].startswith("cpu: ")


def test_another_code_version_is_measured_again_unless_reuse_any(tmp_path):
    cell(tmp_path, "a")
    rewrite_store(tmp_path, code_version="0.0.1+0123456789ab")
    assert not measured(cell(tmp_path, "b", "reuse=any"))
    assert measured(cell(tmp_path, "c"))  # reuse=same_code is the default


def test_another_machine_is_never_reused(tmp_path):
    cell(tmp_path, "a")
    rewrite_store(tmp_path, hardware_id="another-machine")
    assert measured(cell(tmp_path, "b", "reuse=any"))


def test_reuse_never_always_measures(tmp_path):
    first = cell(tmp_path, "a")
    forced = cell(tmp_path, "b", "reuse=never")
    assert measured(forced) and forced["config_hash"] == first["config_hash"]  # reuse is not part of the hash


def test_a_cell_waits_while_another_process_measures_it_then_reuses_that_result(tmp_path, capfd):
    first = cell(tmp_path, "a")
    rewrite_store(tmp_path, status="failed")  # nothing reusable yet: the next run must measure
    done: list[dict] = []
    with record.cell_lock(tmp_path / "store", first["config_hash"]):
        waiter = threading.Thread(target=lambda: done.append(cell(tmp_path, "b")))
        waiter.start()
        time.sleep(2.0)
        assert waiter.is_alive() and not (tmp_path / "b" / "result.json").exists()  # blocked on the lock
        # the holder finishes its measurement: its ok row lands in the store
        record.append_row(tmp_path / "store" / record.TABLE_NAME, {**first, "status": "ok"})
    waiter.join(timeout=60)
    assert done and not measured(done[0]) and done[0]["result_path"] == first["result_path"]
    assert "is measuring this cell" in capfd.readouterr().err


def test_rerunning_into_the_same_sweep_folder_keeps_one_row_per_job(tmp_path):
    cell(tmp_path, "0", job=0)
    cell(tmp_path, "1", "workload.output_len.mean=4", job=1)
    cell(tmp_path, "0", "reuse=never", job=0)
    cell(tmp_path, "1", "workload.output_len.mean=4", job=1)  # reused
    rows = list(record.read_rows(tmp_path / "sweep" / record.TABLE_NAME))
    assert sorted(Path(r["job_dir"]).name for r in rows) == ["0", "1"]
    assert len(list(record.read_rows(tmp_path / "store" / record.TABLE_NAME))) == 3  # the store keeps history


def test_a_cell_reused_by_another_experiment_is_counted_in_that_experiment(tmp_path):
    """The experiment is no part of the config hash: a study reuses another's cell and claims it as its own."""
    first = cell(tmp_path, "a", "+experiment=graphs")  # FAST's engine and lengths win over the experiments'
    again = cell(tmp_path, "b", "+experiment=kv_cache")
    assert measured(first) and not measured(again) and again["config_hash"] == first["config_hash"]
    assert (first["experiment"], again["experiment"]) == ("graphs", "kv_cache")
