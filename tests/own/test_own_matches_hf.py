"""The own engine computes what HF transformers computes: same greedy tokens, same logits (fp32 SmolLM2)."""

from __future__ import annotations

import pytest
import torch

from engines import create_engine
from engines.base import ModelSpec, Request, SamplingParams, Technique
from engines.own import model_runner
from own_prompts import text_prompts

NEW_TOKENS = 64
PROMPT_LENGTHS = [1, 2, 3, 5, 8, 15, 16, 17, 31, 33, 64, 100, 127, 160, 200, 256, 300, 390, 512, 530]
LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.generation_config.eos_token_id = None  # generate exactly NEW_TOKENS, like ignore_eos
    return model.eval()


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    return text_prompts(smollm2_dir, PROMPT_LENGTHS)


@pytest.fixture(scope="module")
def hf_reference(hf_model, prompts):
    """Greedy tokens and last-step logits of `model.generate`, one prompt at a time (no padding)."""
    tokens, last_logits = [], []
    with torch.inference_mode():
        for prompt in prompts:
            out = hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                output_logits=True, return_dict_in_generate=True,
            )  # fmt: skip
            tokens.append(out.sequences[0, len(prompt) :].tolist())
            last_logits.append(out.logits[-1][0].float())
    return tokens, last_logits


@pytest.fixture(scope="module")
def own_run(smollm2_dir, prompts, monkeypatch_module):
    """Our engine on all prompts at once (continuous batching, chunked prefill), recording sampled logits."""
    recorded: dict[int, torch.Tensor] = {}
    real_sample = model_runner.sample

    def recording_sample(logits, params, generators, *argmax_rows):
        ids = real_sample(logits, params, generators, *argmax_rows)
        for row, p in enumerate(params):
            recorded[id(p)] = logits[row].clone()  # the latest step of each request wins
        return ids

    monkeypatch_module.setattr(model_runner, "sample", recording_sample)
    engine = create_engine("own", ModelSpec("smollm2", str(smollm2_dir)), Technique(),
                           dict(kv_cache_bytes=1 << 30, max_num_batched_tokens=512), "cpu")
    params = [SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True) for _ in prompts]
    outputs = engine.generate([Request(f"r{i}", p, s) for i, (p, s) in enumerate(zip(prompts, params))])
    return engine, outputs, [recorded[id(p)] for p in params]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_greedy_tokens_identical_to_hf_generate(hf_reference, own_run, prompts):
    hf_tokens, _ = hf_reference
    _, outputs, _ = own_run
    for prompt, out, expected in zip(prompts, outputs, hf_tokens):
        assert out.finish_reason == "length"
        assert out.token_ids == expected, f"prompt of {len(prompt)} tokens diverged"


@pytest.mark.slow
def test_last_step_logits_match_hf_within_tolerance(hf_reference, own_run):
    _, hf_logits = hf_reference
    _, _, own_logits = own_run
    worst = max(float((ours - theirs).abs().max()) for ours, theirs in zip(own_logits, hf_logits))
    assert worst < LOGIT_ATOL, f"largest logit difference {worst:.2e}"


@pytest.mark.slow
def test_score_logprobs_match_hf_forward(hf_model, own_run, prompts):
    engine, outputs, _ = own_run
    sequences = [p + o.token_ids for p, o in zip(prompts[-4:], outputs[-4:])]
    scored = engine.score(sequences)
    with torch.inference_mode():
        for seq, result in zip(sequences, scored):
            logits = hf_model(torch.tensor([seq])).logits[0, :-1].float()
            expected = logits.log_softmax(-1).gather(1, torch.tensor(seq[1:])[:, None]).squeeze(1)
            assert len(result.logprobs) == len(seq) - 1
            assert torch.allclose(torch.tensor(result.logprobs), expected, atol=LOGIT_ATOL)
            assert result.is_greedy == (logits.argmax(-1) == torch.tensor(seq[1:])).tolist()
