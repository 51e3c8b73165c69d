"""Padded batches and token-budget batching used by the HF engine."""

from __future__ import annotations

import torch

from engines.hf.steps import StepRecorder
from engines.padding import pad_batch, token_budget_batches


def test_left_padding_aligns_last_tokens_and_right_padding_aligns_first_tokens():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, device="cpu", left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, device="cpu", left=False)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_token_budget_batches_keep_padded_size_within_budget_and_cover_every_index():
    lengths = [3, 10, 4, 9, 1, 30]
    batches = token_budget_batches(lengths, max_padded_tokens=20, max_rows=8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the budget: alone
    for batch in batches[1:]:
        assert max(lengths[i] for i in batch) * len(batch) <= 20
    assert all(len(b) <= 2 for b in token_budget_batches(lengths, max_padded_tokens=1000, max_rows=2))


def test_step_recorder_finishes_rows_at_their_limit_or_stop_token_and_stamps_each_step():
    recorder = StepRecorder(limits=[3, 5], stop_sets=[frozenset(), frozenset({9})])
    finished = []
    for step_tokens in ([4, 4], [5, 9], [6, 7], [7, 7]):
        ids = torch.tensor([[1, t] for t in step_tokens])
        finished.append(recorder(ids, torch.empty(0)).tolist())
    assert finished == [[False, False], [False, True], [True, True], [True, True]]
    assert recorder.tokens == [[4, 5, 6], [4, 9]]
    assert recorder.reasons == ["length", "stop"]
    assert recorder.times[1] == recorder.times[0][:2]  # rows share each step's timestamp
    assert recorder.times[0] == sorted(recorder.times[0])
