"""hf and own engines give the same accuracy through lm-eval, and the gate catches a broken one.

Real shared data, the embedded SmolLM2, a few documents to stay quick: standard 5-shot MMLU on
two subjects whose first questions the model answers (so a broken engine has room to fall),
1-shot GSM8K with short generations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines import create_engine
from engines.base import ModelSpec, ScoredSequence, Technique
from harness.eval import EvalConfig, GSM8KConfig, MMLUConfig, evaluate

pytestmark = pytest.mark.slow  # several minutes: four lm-eval runs on CPU

SUBJECTS = ["high_school_biology", "high_school_microeconomics"]
PER_SUBJECT = 2


def eval_config(shared_data: Path, gsm8k: bool = True) -> EvalConfig:
    return EvalConfig(
        mmlu=MMLUConfig(num_fewshot=5, limit=PER_SUBJECT, subjects=SUBJECTS),
        gsm8k=GSM8KConfig(num_fewshot=1, limit=2, max_gen_toks=64) if gsm8k else None,
        data_dir=str(shared_data),
        batch_size=8,
    )


class ReversedScores:
    """A broken engine: the wrapped engine's log-probabilities with their sign flipped."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score_tails(self, sequences, tails):
        scored = self.inner.score_tails(sequences, tails)
        return [ScoredSequence([-lp for lp in s.logprobs], s.is_greedy) for s in scored]


def load_samples(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def model(smollm2_dir) -> ModelSpec:
    return ModelSpec(name="smollm2-135m", path=str(smollm2_dir), dtype="float32")


@pytest.fixture(scope="module")
def runs(model, shared_data, tmp_path_factory):
    """accuracy blocks: hf (the baseline), own (judged against hf), hf with reversed scores."""
    out = tmp_path_factory.mktemp("accuracy")
    blocks = {}
    hf = create_engine("hf", model, Technique(), {}, "cpu")
    blocks["hf"] = evaluate(eval_config(shared_data), hf, model, out / "hf", None)
    baseline = {"accuracy": blocks["hf"], "result_path": str(out / "hf" / "result.json")}
    blocks["broken"] = evaluate(eval_config(shared_data, gsm8k=False), ReversedScores(hf), model, out / "broken", baseline)
    hf.close()
    own = create_engine("own", model, Technique(), {}, "cpu")
    blocks["own"] = evaluate(eval_config(shared_data), own, model, out / "own", baseline)
    own.close()
    return blocks


def test_own_and_hf_give_the_same_mmlu_loglikelihoods_and_acc(runs):
    hf, own = (load_samples(runs[e]["tasks"]["mmlu"]["samples_path"]) for e in ("hf", "own"))
    assert [(s["task"], s["doc_id"]) for s in hf] == [(s["task"], s["doc_id"]) for s in own]
    assert len(hf) == len(SUBJECTS) * PER_SUBJECT
    for a, b in zip(hf, own):
        assert a["prompt"] == b["prompt"]
        ours = [choice[0][0] for choice in b["responses"]]
        theirs = [choice[0][0] for choice in a["responses"]]
        assert ours == pytest.approx(theirs, rel=1e-4, abs=2e-3)
        assert a["acc"] == b["acc"]
    assert runs["own"]["tasks"]["mmlu"]["metrics"] == runs["hf"]["tasks"]["mmlu"]["metrics"]


def test_own_and_hf_give_the_same_gsm8k_generations_and_exact_match(runs):
    hf, own = (load_samples(runs[e]["tasks"]["gsm8k"]["samples_path"]) for e in ("hf", "own"))
    assert len(hf) == len(own) == 2 * 2  # one record per document and answer extraction
    for a, b in zip(hf, own):
        assert a["responses"] == b["responses"]
        assert a["filtered"] == b["filtered"]
        assert a["exact_match"] == b["exact_match"]
    assert runs["own"]["tasks"]["gsm8k"]["metrics"] == runs["hf"]["tasks"]["gsm8k"]["metrics"]


def test_accuracy_block_reports_stderr_counts_time_and_sample_files(runs):
    mmlu = runs["hf"]["tasks"]["mmlu"]
    assert mmlu["n_samples"] == len(SUBJECTS) * PER_SUBJECT
    assert 0.0 <= mmlu["metrics"]["acc,none"]["value"] <= 1.0
    assert mmlu["metrics"]["acc,none"]["stderr"] >= 0  # 0 when every answer is right
    assert mmlu["seconds"] > 0 and Path(mmlu["samples_path"]).is_file()
    assert set(runs["hf"]["tasks"]["gsm8k"]["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert runs["hf"]["gate"]["status"] == "no_baseline"


def test_gate_passes_own_and_fails_an_engine_with_broken_scores(runs):
    baseline_acc = runs["hf"]["tasks"]["mmlu"]["metrics"]["acc,none"]["value"]
    assert baseline_acc >= 0.75  # precondition: the model answers this subset, so a drop must show
    assert runs["own"]["gate"]["passed"] is True
    assert runs["broken"]["gate"]["passed"] is False
    assert runs["broken"]["accuracy_delta"]["mmlu/acc,none"] < 0

