"""The hardware axis: options that say what a cluster job asks for and what an hour of it costs; cost
per million output tokens from the measured throughput; energy from hardware counters or why none;
requests checked against what sinfo reports before anything is submitted."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from harness.config import ConfigError, load, register
from harness.energy import EnergyMeter, rapl_domains
from harness.hardware import HardwareConfig, cost_block, gres_gpus, reprice
from harness.runner import semantic_config
from harness.slurm_check import check_request, parse_sinfo
from harness import record
from hydra_plugins.infermatrix_launcher.slurm_launcher import parse_time_left, submitit_parameters

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def launcher_for(*overrides: str) -> dict:
    """The launcher node a cell with these overrides resolves to, renamed as submitit takes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return submitit_parameters(OmegaConf.to_container(cfg.hydra.launcher, resolve=True))


@pytest.mark.parametrize("name", ["cpu", "h100", "a100", "h200"])
def test_every_hardware_option_loads_with_a_price(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = load(compose("config", overrides=[f"hardware={name}"]))
    assert config.hardware.name == name and config.hardware.price_per_device_hour > 0
    assert (config.hardware.gpus > 0) == (name != "cpu")


def test_a_cpu_cell_asks_for_no_gpu_and_what_a_small_node_has():
    params = launcher_for()
    assert params["gpus_per_node"] is None and params["cpus_per_task"] == 2 and params["mem_gb"] == 8


def test_a_gpu_option_asks_for_its_gpu_type_through_the_launcher():
    params = launcher_for("hardware=h100", "hardware.partition=gpu")
    assert (params["gpus_per_node"], params["slurm_constraint"], params["slurm_partition"]) == (1, "h100", "gpu")
    typed = launcher_for("hardware=a100", "hardware.gres=gpu:a100:1", "hardware.constraint=null")
    assert typed["slurm_gres"] == "gpu:a100:1" and typed["gpus_per_node"] is None  # the gres names the count


def test_a_gres_that_disagrees_with_gpus_is_refused():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hardware=h100", "hardware.gres=gpu:h100:2"])
    with pytest.raises(ConfigError, match="asks for 2 GPUs but gpus=1"):
        load(cfg)
    assert (gres_gpus("gpu:h100:2"), gres_gpus("gpu"), gres_gpus("shard:4")) == (2, 1, 0)


def test_the_hardware_option_and_its_price_do_not_change_the_config_hash():
    # the measured fingerprint decides reuse; a new price must not make every cell "new"
    def chash(*overrides: str) -> str:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
        return record.config_hash(semantic_config(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)))

    assert chash() == chash("hardware=h100") == chash("hardware.price_per_device_hour=9")


METRICS = {"total_output_tokens": 1000, "duration_s": 10.0, "output_throughput_tok_s": 100.0}
CI = {"output_throughput_tok_s": {"low": 80.0, "high": 125.0}}


def test_cost_per_million_output_tokens_follows_price_devices_and_throughput():
    h100x2 = HardwareConfig(name="h100x2", gpus=2, price_per_device_hour=3.6)
    cost = cost_block(h100x2, "cuda", METRICS, CI)
    # 2 GPUs x $3.60/h = $0.002/s; at 100 tok/s a million tokens take 10,000 s = $20
    assert cost["usd_per_1m_output_tokens"] == pytest.approx(20.0)
    assert cost["usd"] == pytest.approx(0.02) and cost["devices"] == 2
    assert cost["ci95"] == {"low": pytest.approx(16.0), "high": pytest.approx(25.0)}  # faster is cheaper


def test_cost_is_refused_with_a_reason_when_it_would_be_wrong():
    no_price = cost_block(HardwareConfig(price_per_device_hour=None), "cpu", METRICS, CI)
    assert no_price["available"] is False and "no price_per_device_hour" in no_price["reason"]
    mismatch = cost_block(HardwareConfig(name="cpu", price_per_device_hour=0.1), "cuda", METRICS, CI)
    assert mismatch["available"] is False and "ran on cuda" in mismatch["reason"]


def test_a_reused_row_is_priced_by_the_option_asked_for_now():
    cheap = HardwareConfig(name="cpu", price_per_device_hour=0.1)
    row = {"cell": "c", **METRICS, "ci95.output_throughput_tok_s.low": 80.0, "ci95.output_throughput_tok_s.high": 125.0,
           "cost.available": False, "cost.reason": "no price", "hardware_config": "old"}  # fmt: skip
    repriced = reprice(row, cheap, "cpu")
    assert repriced["cost.usd_per_1m_output_tokens"] == pytest.approx(0.1 / 3600 / 100.0 * 1e6)
    assert repriced["cost.ci95.high"] == pytest.approx(0.1 / 3600 / 80.0 * 1e6)
    assert "cost.reason" not in repriced and repriced["hardware_config"] == "cpu" and repriced["cell"] == "c"


def fake_rapl(root: Path, energy_uj: int, max_uj: int = 1000_000_000) -> None:
    zone = root / "intel-rapl:0"
    (zone / "intel-rapl:0:0").mkdir(parents=True, exist_ok=True)  # a subzone (core): not counted twice
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (zone / "intel-rapl:0:0" / "energy_uj").write_text("5\n")


def test_rapl_energy_is_the_package_counter_difference_and_survives_a_wrap(tmp_path):
    fake_rapl(tmp_path, 999_000_000)
    with EnergyMeter("cpu", powercap=tmp_path) as meter:
        fake_rapl(tmp_path, 1_000_000)  # wrapped past max_energy_range_uj: 1 J + 2 J
    energy = meter.result(generated_tokens=30)
    assert energy["available"] and energy["source"] == "rapl"
    assert energy["by_domain"] == {"package-0(intel-rapl:0)": pytest.approx(2.0)}
    assert energy["joules_per_token"] == pytest.approx(2.0 / 30)


def test_energy_says_why_when_no_counter_is_readable(tmp_path):
    with EnergyMeter("cpu", powercap=tmp_path / "absent") as meter:
        pass
    assert meter.result(10) == {"available": False, "source": "rapl",
                                "reason": f"{tmp_path / 'absent'} does not exist: this kernel exposes no RAPL "
                                          "counters (a VM, or no powercap driver)"}  # fmt: skip


def test_this_machine_reports_energy_or_the_reason_it_cannot():
    # whatever /sys/class/powercap holds here: a reading, or a reason naming the path
    domains, reason = rapl_domains()
    assert bool(domains) != bool(reason)
    if reason:
        assert "/sys/class/powercap" in reason


SINFO = """debug*|cpu1|2|24105|(null)|(null)|idle
gpu|g1|64|512000|gpu:h100:8(S:0-1)|h100,nvlink|mixed
gpu|g2|64|512000|gpu:a100:8|a100|drained
"""


def test_a_request_some_node_can_run_passes():
    assert check_request({"cpus_per_task": 1, "mem_gb": 2}, SINFO) is None
    assert check_request({"slurm_partition": "gpu", "gpus_per_node": 2, "slurm_constraint": "h100",
                          "cpus_per_task": 8, "mem_gb": 64}, SINFO) is None  # fmt: skip


def test_an_impossible_request_names_what_it_lacks_and_what_is_available():
    problem = check_request({"cpus_per_task": 8, "mem_gb": 64, "gpus_per_node": 1}, SINFO)
    assert "no node of partition 'debug' can run a cell (cpu1 lacks 8 CPUs, 64 GB of memory, 1 GPU(s))" in problem
    assert "partition debug* node cpu1: 2 CPUs, 24105 MB, no GPUs, features none, idle" in problem
    drained = check_request({"slurm_partition": "gpu", "slurm_gres": "gpu:a100:1"}, SINFO)
    assert "g1 lacks 1 a100 GPU(s)" in drained and "g2 lacks a usable state (it is drained)" in drained
    assert "partition 'nope' does not exist" in check_request({"slurm_partition": "nope"}, SINFO)


def test_sinfo_lines_parse_into_nodes():
    gpu = parse_sinfo(SINFO)[1]
    assert (gpu.partition, gpu.default, gpu.cpus, gpu.mem_mb) == ("gpu", False, 64, 512000)
    assert gpu.gpus("h100") == 8 and gpu.gpus("a100") == 0 and gpu.features == {"h100", "nvlink"}


def test_the_time_a_job_has_left_is_read_in_every_squeue_form():
    # how a USR2 is judged: a preemption unless the time limit is this close
    assert [parse_time_left(t) for t in ("4:50", "1:02:03", "2-00:00:01", "UNLIMITED\n", "")] == [
        290, 3723, 172801, None, None]  # fmt: skip
