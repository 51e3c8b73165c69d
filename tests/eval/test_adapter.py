"""EngineLM hands the engine many sequences or requests per call and maps answers back."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest

from engines.base import Engine, RequestOutput, ScoredSequence
from harness.eval.adapter import EngineLM


class RecordingEngine(Engine):
    """Scores token t as -t/1000 (greedy when even); generates a fixed token list."""

    eos_token_id = 2

    def __init__(self, generated: list[int]):
        self.generated = generated
        self.score_calls: list[list[list[int]]] = []
        self.generate_calls: list[list] = []

    def score(self, sequences):
        self.score_calls.append([list(s) for s in sequences])
        return [ScoredSequence([-t / 1000 for t in s[1:]], [t % 2 == 0 for t in s[1:]]) for s in sequences]

    def generate(self, requests, progress=None):
        self.generate_calls.append(list(requests))
        if progress:
            progress(len(requests))
        return [RequestOutput(r.request_id, len(r.prompt_token_ids), self.generated, [], 0.0, "length") for r in requests]

    def stats(self):
        return {}  # no max_model_len: the window is the model's context


def request(*args):
    return SimpleNamespace(args=args)


@pytest.fixture(scope="module")
def tokenizer_dir(smollm2_dir):
    return str(smollm2_dir)


def test_loglikelihood_batches_distinct_sequences_and_sums_the_continuation(tokenizer_dir):
    engine = RecordingEngine([])
    lm = EngineLM(engine, tokenizer_dir, batch_size=4)
    contexts = [f"Question {i}: pick one.\nAnswer:" for i in range(5)]
    requests = [request(c, f" {letter}") for c in contexts for letter in "ABCD"] + [request(contexts[0], " A")]
    answers = lm.loglikelihood(requests, disable_tqdm=True)
    assert [len(call) for call in engine.score_calls] == [4, 4, 4, 4, 4]  # 20 distinct, 4 per call
    assert answers[-1] == answers[0]  # the duplicate was scored once and answered twice
    for req, (logprob, _) in zip(requests, answers):
        continuation = lm.tokenizer.encode(req.args[1], add_special_tokens=False)
        assert logprob == pytest.approx(sum(-t / 1000 for t in continuation))


class RecordingBar:
    """Stands in for tqdm: remembers the total and every update."""

    bars: ClassVar[list[RecordingBar]] = []

    def __init__(self, total=None, **kwargs):
        self.total, self.unit, self.updates = total, kwargs.get("unit"), []
        RecordingBar.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.updates.append(n)


def test_progress_counts_questions_and_each_call_holds_whole_questions(tokenizer_dir, monkeypatch):
    monkeypatch.setattr("harness.eval.adapter.tqdm", RecordingBar)
    RecordingBar.bars = []
    engine = RecordingEngine([])
    lm = EngineLM(engine, tokenizer_dir, batch_size=10)
    contexts = [f"Question {i}: pick one{'.' * i}\nAnswer:" for i in range(5)]
    requests = [SimpleNamespace(args=(c, f" {letter}"), doc_id=i, task_name="mmlu_x")
                for i, c in enumerate(contexts) for letter in "ABCD"]  # fmt: skip
    lm.loglikelihood(requests, disable_tqdm=False)
    (bar,) = RecordingBar.bars
    assert bar.total == 5 and bar.unit == "question" and sum(bar.updates) == 5
    assert [len(call) for call in engine.score_calls] == [8, 8, 4]  # two questions of 4 fit in 10 sequences
    assert [n for n in bar.updates] == [2, 2, 1]
    for call in engine.score_calls:  # the choices of a question travel together
        assert len({tuple(seq[:-1]) for seq in call}) == len(call) // 4


def test_generate_until_sends_all_requests_at_once_and_cuts_at_stop_strings(tokenizer_dir):
    text = " 3 + 4 = 7.\n#### 7\n\nQuestion: what next"
    engine = RecordingEngine(EngineLM(RecordingEngine([]), tokenizer_dir).encode(text))
    lm = EngineLM(engine, tokenizer_dir, max_length=64)
    kwargs = {"until": ["Question:"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 32}
    answers = lm.generate_until([request("Question: 3 + 4?\nAnswer:", kwargs)] * 3, disable_tqdm=True)
    assert len(engine.generate_calls) == 1 and len(engine.generate_calls[0]) == 3
    sent = engine.generate_calls[0][0]
    assert sent.sampling.max_tokens == 32 and sent.sampling.temperature == 0.0
    assert sent.sampling.stop_token_ids == (2,)
    assert answers == [" 3 + 4 = 7.\n#### 7\n\n"] * 3


def test_generation_prompts_keep_their_last_tokens_within_the_window(tokenizer_dir):
    engine = RecordingEngine([5])
    lm = EngineLM(engine, tokenizer_dir, max_length=40)
    prompt = " ".join(str(i) for i in range(100))
    lm.generate_until([request(prompt, {"until": [], "max_gen_toks": 10})], disable_tqdm=True)
    sent = engine.generate_calls[0][0].prompt_token_ids
    assert sent == lm.encode(prompt)[-30:]


def test_unknown_generation_kwargs_are_refused(tokenizer_dir):
    lm = EngineLM(RecordingEngine([5]), tokenizer_dir)
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until([request("x", {"until": [], "num_beams": 4})], disable_tqdm=True)


def test_rolling_loglikelihood_counts_every_token_of_a_long_document_once(tokenizer_dir):
    engine = RecordingEngine([])
    lm = EngineLM(engine, tokenizer_dir, batch_size=64, max_length=16)
    text = "The quick brown fox jumps over the lazy dog. " * 8
    (total,) = lm.loglikelihood_rolling([request(text)], disable_tqdm=True)
    tokens = lm.encode(text)
    assert len(tokens) > 3 * 16  # several windows
    assert total == pytest.approx(sum(-t / 1000 for t in tokens))
    assert all(len(seq) <= 16 for call in engine.score_calls for seq in call)


def test_chat_template_renders_turns_and_leaves_a_prefilled_answer_open(tokenizer_dir):
    lm = EngineLM(RecordingEngine([]), tokenizer_dir)
    prompt = lm.apply_chat_template([{"role": "user", "content": "2 + 2?"}])
    assert "<|im_start|>user\n2 + 2?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    prefilled = lm.apply_chat_template(
        [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "The answer is"}],
        add_generation_prompt=False,
    )
    assert prefilled.endswith("<|im_start|>assistant\nThe answer is")
    assert lm.encode("<|im_start|>")[0] == lm.tokenizer.convert_tokens_to_ids("<|im_start|>")
