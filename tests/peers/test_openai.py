"""engine=openai against real servers: our `infermatrix-serve` (own behind HTTP) and, when importable,
llama.cpp's server. Everything runs on loopback, on SmolLM2-135M float32 with one thread."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines import create_engine
from engines.base import Arrivals, ModelSpec, Request, SamplingParams, Technique

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "INFERMATRIX_TEST_SERVE_KEY"
SERVER_OPTIONS = ["--threads", "1", "--max-num-seqs", "16", "--max-model-len", "512"]
OWN_OPTIONS = {"max_num_seqs": 16, "max_model_len": 512}


def env_with_repo(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_WAIT_POLICY": "PASSIVE", **extra}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_url(proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := re.search(r"http://\S+/v1", log.read_text(errors="replace")):
            return found.group(0)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(log.read_text()[-3000:])


@pytest.fixture(scope="module")
def serve_key() -> str:
    return "sk-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def server(smollm2_dir, serve_key, tmp_path_factory):
    """The real infermatrix-serve on a free loopback port, requiring an API key."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engines.own.serve_cli", "--model-dir", str(smollm2_dir), "--port", "0",
             "--key-env", KEY_ENV, *SERVER_OPTIONS],
            stdout=out, stderr=subprocess.STDOUT, env=env_with_repo(**{KEY_ENV: serve_key}), start_new_session=True,
        )  # fmt: skip
    try:
        yield wait_for_url(proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server, serve_key, smollm2_dir):
    os.environ[KEY_ENV] = serve_key
    engine = create_engine("openai", ModelSpec("smollm2", str(smollm2_dir)), Technique(),
                           {"base_url": server, "key_env": KEY_ENV}, "cpu")  # fmt: skip
    yield engine
    engine.close()
    os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def own(smollm2_dir):
    engine = create_engine("own", ModelSpec("smollm2", str(smollm2_dir)), Technique(), OWN_OPTIONS, "cpu")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def greedy(prompts, max_tokens=12, **kw):
    return [Request(f"p{i}", p, SamplingParams(max_tokens=max_tokens, **kw)) for i, p in enumerate(prompts)]


def test_greedy_token_ids_over_http_equal_own_in_process(client, own, prompts):
    over_http = client.generate(greedy(prompts))
    local = own.generate(greedy(prompts))
    for h, o in zip(over_http, local):
        assert h.error is None and h.finish_reason in ("stop", "length")
        assert h.token_ids == o.token_ids and h.finish_reason == o.finish_reason
    assert client.stats()["token_count_source"] == "server_token_ids"


def test_ignore_eos_gives_exact_lengths_and_chunk_times_never_decrease(client, prompts):
    lengths = [1, 5, 17]
    reqs = [Request(f"l{n}", prompts[i], SamplingParams(max_tokens=n, ignore_eos=True)) for i, n in enumerate(lengths)]
    for out, n in zip(client.generate(reqs), lengths):
        assert out.error is None and out.finish_reason == "length"
        assert len(out.token_ids) == len(out.token_times) == n
        assert out.arrival_time <= out.token_times[0]
        assert all(a <= b for a, b in zip(out.token_times, out.token_times[1:]))


def test_concurrent_requests_all_complete_and_the_server_batches_them(client, prompts):
    before = client.stats()["server"]
    reqs = [Request(f"c{i}", prompts[i % 3] + [i + 10], SamplingParams(max_tokens=16, ignore_eos=True))
            for i in range(8)]  # fmt: skip
    outs = client.generate(reqs)
    after = client.stats()["server"]
    assert all(o.error is None and len(o.token_ids) == 16 for o in outs)
    assert after["peak_running_seqs"] > 1
    generated = after["generated_tokens"] - before["generated_tokens"]
    steps = after["steps"] - before["steps"]
    assert generated == 8 * 16 and steps < generated / 2, (steps, generated)  # one request per step would be 128


def test_a_bad_request_fails_alone_with_the_servers_message(client, prompts):
    reqs = greedy(prompts[:2], max_tokens=4)
    reqs.insert(1, Request("bad", [1, 2, 10**7], SamplingParams(max_tokens=4)))
    outs = client.generate(reqs)
    assert outs[1].finish_reason == "error" and "HTTP 400" in outs[1].error and "out of range" in outs[1].error
    assert [o.finish_reason for o in (outs[0], outs[2])] == ["length", "length"]


def test_serve_submits_at_offsets_with_a_concurrency_cap(client, prompts):
    reqs = [Request(f"s{i}", prompts[0], SamplingParams(max_tokens=2, ignore_eos=True)) for i in range(3)]
    outs = client.serve(reqs, Arrivals([0.0, 0.3, 0.6], max_concurrency=2))
    t0 = outs[0].arrival_time
    assert all(o.error is None for o in outs)
    assert outs[1].arrival_time - t0 >= 0.29 and outs[2].arrival_time - t0 >= 0.59


def test_score_through_echo_logprobs_matches_own(client, own, prompts):
    over_http, local = client.score(prompts), own.score(prompts)
    for h, o in zip(over_http, local):
        assert h.is_greedy == o.is_greedy
        assert h.logprobs == pytest.approx(o.logprobs, abs=1e-3)


def test_a_wrong_key_is_refused_by_the_server(server, smollm2_dir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(RuntimeError, match="401"):
        create_engine("openai", ModelSpec("smollm2", str(smollm2_dir)), Technique(),
                      {"base_url": server, "key_env": KEY_ENV}, "cpu")  # fmt: skip


def test_server_command_starts_the_server_and_close_stops_it(smollm2_dir, prompts):
    port = free_port()
    command = [sys.executable, "-m", "engines.own.serve_cli", "--model-dir", str(smollm2_dir), "--port", str(port),
               *SERVER_OPTIONS]  # fmt: skip
    engine = create_engine("openai", ModelSpec("smollm2", str(smollm2_dir)), Technique(),
                           {"base_url": f"http://127.0.0.1:{port}/v1", "server_command": command,
                            "server_start_timeout_s": 180}, "cpu")  # fmt: skip
    try:
        pid = engine.server.pid
        out = engine.generate(greedy(prompts[:1], max_tokens=3, ignore_eos=True))[0]
        assert out.error is None and len(out.token_ids) == 3
        assert engine.stats()["server_started_by_engine"] is True
    finally:
        engine.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_harness_cell_sends_the_key_and_writes_it_nowhere(server, serve_key, tmp_path):
    cmd = [sys.executable, "-m", "harness.cli", "engine=openai", f"engine.base_url={server}",
           f"engine.key_env={KEY_ENV}", "isolation=process", "tracker=none", "threads=1", "scenario.warmup=0",
           "scenario.repeats=2", "workload.input_len.mean=8", "workload.output_len.mean=4",
           f"store={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env_with_repo(**{KEY_ENV: serve_key}))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok"
    assert result["engine_stats"]["token_count_source"] == "server_token_ids"
    assert all(v is None for v in result["technique_applied"].values())  # the server decides
    assert (tmp_path / "run" / "worker.log").is_file()
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and serve_key.encode() in p.read_bytes()]
    assert not leaked and serve_key not in proc.stdout + proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama_cpp (llama-cpp-python) is not importable in this environment")  # fmt: skip
def test_llama_cpp_server(tmp_path, smollm2_dir, prompts):
    from harness.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    if gguf is None:
        pytest.skip("no embedded GGUF")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
               "--n_threads", "1", "--n_ctx", "512",
               "--interrupt_requests", "False"]  # fmt: skip (else a new request interrupts the running one)
    engine = create_engine("openai", ModelSpec("smollm2", str(smollm2_dir)), Technique(),
                           {"base_url": f"http://127.0.0.1:{port}/v1", "server_command": command,
                            "server_start_timeout_s": 180, "prompt_as": "text"}, "cpu")  # it takes only text
    try:
        outs = engine.generate(greedy(prompts, max_tokens=8))
        assert all(o.error is None and o.token_ids for o in outs), [o.error for o in outs]
        assert all(a <= b for o in outs for a, b in zip(o.token_times, o.token_times[1:]))
        assert engine.stats()["token_count_source"] in ("server_token_ids", "tokenizer")
    finally:
        engine.close()
