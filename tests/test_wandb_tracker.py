"""The W&B tracker logs each cell offline, and its log reads back as the same values."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
import sys
import time
from pathlib import Path

import pytest

from harness.trackers import TrackerConfig, track_result
from harness.trackers.mode import choose_mode, resolve_mode, unreachable_reason
from harness.trackers.secrets import REDACTED, is_secret_key, scrub_argv
from harness.trackers.wandb_log import BLOCK_SIZE, WandbLogError, read_chunks, read_records, read_run
from harness.record import flatten

FAKE_KEY = "hf_FAKEKEYdoNotLeak0123456789abcdef"


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path, monkeypatch):
    """No network, no credentials, and every wandb file under tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_DISABLED", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])


def make_result(num_requests: int = 24, seed: int = 0) -> dict:
    rng = random.Random(seed)
    requests = []
    for i in range(num_requests):
        itl = [rng.uniform(20, 40) for _ in range(15)]
        ttft = rng.uniform(50, 90)
        requests.append({"request_id": f"r{i}", "repeat": i % 3, "prompt_len": 128, "output_len": 16,
                         "ttft_ms": ttft, "tpot_ms": sum(itl) / len(itl), "e2el_ms": ttft + sum(itl), "itl_ms": itl})

    def stats(values: list[float]) -> dict:
        ordered = sorted(values)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {"mean": sum(values) / len(values), "p50": pick(0.5), "p90": pick(0.9), "p95": pick(0.95),
                "p99": pick(0.99), "std": rng.uniform(1, 5)}

    return {
        "schema": "infermatrix.result/1", "status": "ok", "reason": None,
        "cell": "hf/smollm2-135m/latency/kv_cache=none", "sweep_id": "2026-11-22_03-00-00", "job_num": 3,
        "config": {"engine": {"name": "hf", "max_num_seqs": 64, "max_num_batched_tokens": 2048},
                   "model": {"name": "smollm2-135m", "dtype": "float32"},
                   "scenario": {"name": "latency", "batch_size": 1, "repeats": 3},
                   "technique": {"kv_cache": "none", "batching": None}},
        "config_hash": "c0ffee12",
        "technique_applied": {"kv_cache": "none", "batching": "static"},
        "model": {"name": "smollm2-135m", "source_kind": "embedded", "path": "/models/x", "dtype": "float32",
                  "random_weights": False},
        "environment": {"python": "3.11", "torch": "2.13.0+cpu", "threads": 1},
        "workload": {"hash": "ab12", "num_requests": num_requests},
        "metrics": {"ttft_ms": stats([r["ttft_ms"] for r in requests]),
                    "tpot_ms": stats([r["tpot_ms"] for r in requests]),
                    "itl_ms": stats([x for r in requests for x in r["itl_ms"]]),
                    "e2el_ms": stats([r["e2el_ms"] for r in requests]),
                    "output_throughput_tok_s": rng.uniform(10, 20), "total_throughput_tok_s": rng.uniform(100, 200),
                    "request_throughput": rng.uniform(0.5, 1.0), "peak_memory_bytes": 1_234_567_890,
                    "duration_s": rng.uniform(20, 30), "num_requests": num_requests,
                    "total_output_tokens": 16 * num_requests},
        "ci95": {"output_throughput_tok_s": interval(rng.uniform(9, 10), rng.uniform(20, 21)),
                 "ttft_ms.mean": interval(rng.uniform(40, 50), rng.uniform(90, 99))},
        "engine_stats": {"forward_calls": 400},
        "accuracy": {"tasks": {"gsm8k": {"metrics": {"exact_match,strict-match": {"value": rng.random(),
                                                                                  "stderr": 0.01}}}},
                     "gate": {"status": "pass", "passed": True}},
        "requests": requests,
        "started_at": "2026-11-22T03:00:00+00:00", "finished_at": "2026-11-22T03:00:30+00:00",
    }


def interval(low: float | None, high: float | None, n: int = 3) -> dict:
    """An interval block as harness.metrics.student_t_interval writes it (null bounds with one repeat)."""
    mean = None if low is None else (low + high) / 2
    return {"n": n, "method": "student-t", "mean": mean, "low": low, "high": high, "std": None if low is None else 1.0,
            "cv": None if low is None else 1.0 / mean, "warning": None if low is None else "noisy"}


def write_result(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "result.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def offline_cfg(**overrides) -> TrackerConfig:
    return TrackerConfig(name="wandb", mode="offline", **overrides)


def test_offline_run_reads_back_with_the_results_config_summary_table_and_artifact(tmp_path):
    result = make_result()
    out_dir = tmp_path / "cell"
    samples = [{"task": "gsm8k", "doc_id": i, "prompt": f"Q{i}", "target": "7", "filtered": ["7"],
                "exact_match": float(i % 2)} for i in range(5)]  # fmt: skip
    samples_path = out_dir / "samples_gsm8k.jsonl"
    out_dir.mkdir(parents=True)
    samples_path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    result["accuracy"]["tasks"]["gsm8k"]["samples_path"] = str(samples_path)
    result_path = write_result(result, out_dir)

    info = track_result(offline_cfg(tags=["ci"]), result, result_path, out_dir)

    assert info["tracker"] == "wandb" and info["mode"] == "offline", info
    assert Path(info["run_dir"]).is_relative_to(out_dir)
    logged = read_run(info["run_dir"])
    assert logged["run"] == {"id": info["run_id"], "project": "infermatrix", "entity": "", "tags": ["ci"],
                             "name": result["cell"], "group": result["sweep_id"], "job_type": "latency"}
    config = dict(logged["config"])
    assert config.pop("resolved") == {k: result[k] for k in ("technique_applied", "model", "workload", "environment")}
    assert config == result["config"]

    summary = logged["summary"]
    for key, value in flatten(result["metrics"]).items():
        assert summary[key] == value, key
    for key, value in flatten(result["ci95"], "ci95.").items():
        assert summary[key] == value, key
    assert summary["ci95.ttft_ms.mean.high"] == result["ci95"]["ttft_ms.mean"]["high"]
    accuracy = result["accuracy"]["tasks"]["gsm8k"]["metrics"]["exact_match,strict-match"]["value"]
    assert summary["accuracy.tasks.gsm8k.metrics.exact_match,strict-match.value"] == accuracy
    assert (summary["status"], summary["reason"], summary["config_hash"]) == ("ok", None, "c0ffee12")

    table, samples_table = sorted(logged["tables"], key=lambda t: t["key"])
    assert table["key"] == "requests" and table["nrows"] == len(result["requests"])
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert rows == result["requests"]
    assert samples_table["key"] == "samples/gsm8k" and samples_table["nrows"] == len(samples)
    logged_samples = [dict(zip(samples_table["columns"], row)) for row in samples_table["data"]]
    assert [s["exact_match"] for s in logged_samples] == [s["exact_match"] for s in samples]
    assert logged_samples[0]["filtered"] == '["7"]'  # nested values are shown as JSON text

    [artifact] = [a for a in logged["artifacts"] if a["type"] == "result"]
    assert artifact["name"] == "result-hf-smollm2-135m-latency-kv_cache-none"
    [entry] = artifact["files"]
    content = result_path.read_bytes()
    assert entry["path"] == "result.json" and entry["size"] == len(content)
    assert entry["digest"] == base64.b64encode(hashlib.md5(content).digest()).decode()


def test_secrets_are_absent_from_everything_wandb_writes(tmp_path, monkeypatch):
    result = make_result(num_requests=3)
    result["config"]["engine"]["hf_token"] = FAKE_KEY
    result["config"]["tracker"] = {"api_key": FAKE_KEY + "x"}
    result["environment"]["WANDB_API_KEY"] = FAKE_KEY
    result["status"], result["reason"] = "failed", f"401 Unauthorized for token {FAKE_KEY}"
    monkeypatch.setattr(sys, "argv", ["infermatrix", f"+engine.hf_token={FAKE_KEY}", "scenario=latency"])
    out_dir = tmp_path / "cell"
    result_path = write_result(result, out_dir)

    info = track_result(offline_cfg(), result, result_path, out_dir)

    assert "error" not in info, info
    assert sys.argv[1] == f"+engine.hf_token={FAKE_KEY}"  # restored after wandb.init
    logged = read_run(info["run_dir"])  # waits for wandb to finish writing
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != result_path]
    leaked = [p for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert leaked == []
    assert logged["config"]["engine"]["hf_token"] == REDACTED
    assert logged["summary"]["reason"] == f"401 Unauthorized for token {REDACTED}"
    [artifact] = [a for a in logged["artifacts"] if a["type"] == "result"]
    staged = json.loads(Path(artifact["files"][0]["local_path"]).read_text())
    assert staged["config"]["tracker"]["api_key"] == REDACTED


def test_a_single_repeat_cell_logs_with_no_interval(tmp_path):
    result = make_result(num_requests=2)
    result["ci95"] = {"output_throughput_tok_s": interval(None, None, n=1), "ttft_ms.mean": None}  # None: older results
    out_dir = tmp_path / "cell"

    info = track_result(offline_cfg(), result, write_result(result, out_dir), out_dir)

    assert "error" not in info and info["mode"] == "offline", info
    summary = read_run(info["run_dir"])["summary"]
    assert summary["ci95.output_throughput_tok_s.n"] == 1
    assert summary["ci95.output_throughput_tok_s.low"] is None and summary["ci95.ttft_ms.mean"] is None


def test_tracker_none_logs_nothing(tmp_path):
    result = make_result(num_requests=2)
    out_dir = tmp_path / "cell"
    result_path = write_result(result, out_dir)

    assert track_result(TrackerConfig(name="none"), result, result_path, out_dir) == {"tracker": "none"}
    assert list(out_dir.iterdir()) == [result_path]


def test_a_tracker_failure_returns_the_error_and_the_next_cell_still_logs(tmp_path):
    result = make_result(num_requests=2)
    out_dir = tmp_path / "cell"
    missing_result_path = out_dir / "gone.json"  # the artifact upload fails after wandb.init

    info = track_result(offline_cfg(), result, missing_result_path, out_dir)

    assert info["tracker"] == "wandb" and "gone.json" in info["error"], info
    next_dir = tmp_path / "next"
    assert "run_id" in track_result(offline_cfg(), result, write_result(result, next_dir), next_dir)


def test_auto_mode_goes_online_only_with_credentials(tmp_path, monkeypatch):
    assert resolve_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert resolve_mode("auto") == "offline"  # the netrc entry is for another host
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("disabled") == "disabled"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def test_auto_mode_with_credentials_but_no_reachable_wandb_host_logs_offline_within_seconds(tmp_path, monkeypatch,
                                                                                          capsys):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    result = make_result(num_requests=2)
    out_dir = tmp_path / "cell"

    start = time.monotonic()
    info = track_result(TrackerConfig(name="wandb", mode="auto"), result, write_result(result, out_dir), out_dir)

    assert time.monotonic() - start < 20  # not wandb's ~90 s wait for a host that never answers
    assert info["mode"] == "offline" and "error" not in info, info
    assert "host is unreachable (http://127.0.0.1:" in info["offline_reason"]
    assert "logged offline instead" in capsys.readouterr().err
    assert read_run(info["run_dir"])["summary"]["status"] == "ok"


def test_the_reachability_probe_needs_an_http_answer_and_is_bounded_by_its_timeout():
    with socket.socket() as silent:  # accepts TCP connections (the kernel's backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        urls = [f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{silent.getsockname()[1]}",
                "https://wandb.invalid"]  # fmt: skip
        for url in urls:
            start = time.monotonic()
            assert unreachable_reason(url, timeout_s=0.5) is not None, url  # refused, silent, no such name
            assert time.monotonic() - start < 1.5, url


def test_a_server_that_answers_any_http_status_is_reachable():
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    with HTTPServer(("127.0.0.1", 0), NotFound) as server:
        Thread(target=server.handle_request, daemon=True).start()
        assert unreachable_reason(f"http://127.0.0.1:{server.server_port}", timeout_s=3.0) is None


def test_only_auto_with_credentials_probes_the_host(monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    assert choose_mode("auto") == ("offline", None)  # no credentials: offline, nothing to explain
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert choose_mode("auto")[0] == "offline" and choose_mode("auto")[1]
    assert choose_mode("online") == ("online", None)  # asked for explicitly: left as asked
    monkeypatch.setenv("WANDB_MODE", "online")
    assert choose_mode("auto") == ("online", None)


def test_secret_keys_are_matched_by_whole_words():
    secret = ["hf_token", "WANDB_API_KEY", "apiKey", "db_password", "client_secret", "access-token"]
    plain = ["max_num_batched_tokens", "tokenizer", "num_tokens", "key", "output_len", "monkey"]
    assert [k for k in secret + plain if is_secret_key(k)] == secret
    assert scrub_argv(["+engine.hf_token=abc", "--api-key", "xyz", "model=m", "note=saw xyz"], ["xyz"]) == [
        f"+engine.hf_token={REDACTED}", "--api-key", REDACTED, "model=m", f"note=saw {REDACTED}"]


def test_reader_reassembles_records_larger_than_a_block(tmp_path):
    import wandb

    big = [f"value-{i:06d}" for i in range(12_000)]  # about 190 KB of config: spans several 32 KiB blocks
    run = wandb.init(project="p", mode="offline", dir=str(tmp_path), config={"big": big},
                     settings=wandb.Settings(console="off", silent=True))
    for step in range(300):
        run.log({"loss": 1.0 / (step + 1)})
    run.finish()
    log = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))

    logged = read_run(log.parent)
    assert max(len(chunk) for chunk in read_chunks(log.read_bytes())) > 2 * BLOCK_SIZE
    assert logged["config"]["big"] == big
    assert [row["loss"] for row in logged["history"]] == [1.0 / (step + 1) for step in range(300)]


def test_reader_rejects_a_corrupted_log(tmp_path):
    result = make_result(num_requests=2)
    out_dir = tmp_path / "cell"
    info = track_result(offline_cfg(), result, write_result(result, out_dir), out_dir)
    read_run(info["run_dir"])  # wandb has finished writing
    log = next(Path(info["run_dir"]).glob("run-*.wandb"))
    data = bytearray(log.read_bytes())
    data[200] ^= 0xFF
    log.write_bytes(bytes(data))

    with pytest.raises(WandbLogError, match="crc mismatch"):
        list(read_records(log))
    with pytest.raises(TimeoutError, match="no exit record"):
        read_run(log.parent, wait_s=0.2)


def test_a_one_repeat_cell_is_measured_recorded_and_logged_offline(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    import engines
    from harness.config import register
    from harness.runner import run_cell

    register()
    monkeypatch.setitem(engines.ENGINES, "fake", ("engines.hf.config:HfOptions", "fake_engine:FakeEngine"))
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["engine.name=fake", "isolation=none", "scenario.repeats=1", "scenario.warmup=0",
                                           "tracker.mode=offline", f"store={tmp_path / 'store'}"])  # fmt: skip

    row = run_cell(cfg, tmp_path / "cell", tmp_path / "sweep", "sweep-1", 0)

    assert row["status"] == "ok" and "tracker.error" not in row, row.get("tracker.error")
    summary = read_run(row["tracker.run_dir"])["summary"]
    assert summary["ci95.output_throughput_tok_s.n"] == 1 and summary["ci95.output_throughput_tok_s.low"] is None
