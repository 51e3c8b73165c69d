"""Request validation (engines/validation.py, SamplingParams.validate): every bad field, wrong types
included, gives a message naming the field and the value, and validation itself never raises."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engines.base import Request, SamplingParams
from engines.validation import checked_sequences, output_id, prompt_len, request_error

VOCAB, MAX_LEN = 100, 32


def error_of(request) -> str | None:
    return request_error(request, VOCAB, MAX_LEN)


def with_sampling(**fields) -> Request:
    return Request("r", [1, 2, 3], SamplingParams(**fields))


def test_a_well_formed_request_has_no_error():
    assert error_of(Request("r", [1, 2, 3], SamplingParams(max_tokens=4))) is None
    assert error_of(Request("r", (0, VOCAB - 1), SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=3))) is None


def test_numpy_integers_count_as_ints():
    request = Request("r", [np.int64(1), np.int32(2)], SamplingParams(max_tokens=np.int64(3), seed=np.uint8(1)))
    assert error_of(request) is None


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("max_tokens", "4", "'4' (str)"),
        ("max_tokens", None, "None"),
        ("max_tokens", 2.5, "2.5 (float)"),
        ("max_tokens", True, "True (bool)"),
        ("max_tokens", 0, "0 (int)"),
        ("temperature", "0.5", "'0.5' (str)"),
        ("temperature", math.nan, "nan"),
        ("temperature", math.inf, "inf"),
        ("temperature", -1.0, "-1.0"),
        ("temperature", 1e-30, "1e-30"),
        ("temperature", None, "None"),
        ("top_k", "5", "'5' (str)"),
        ("top_k", 2.5, "2.5 (float)"),
        ("top_k", -1, "-1"),
        ("top_k", 2**70, str(2**70)),
        ("top_p", 0.0, "0.0"),
        ("top_p", math.nan, "nan"),
        ("top_p", "1", "'1' (str)"),
        ("seed", "abc", "'abc' (str)"),
        ("seed", 1.5, "1.5 (float)"),
        ("seed", -1, "-1"),
        ("seed", 2**64, str(2**64)),
        ("stop_token_ids", None, "None"),
        ("stop_token_ids", "2", "'2' (str)"),
        ("stop_token_ids", [2, "x"], "[2, 'x']"),
        ("stop_token_ids", [-1], "[-1]"),
        ("ignore_eos", "yes", "'yes' (str)"),
        ("ignore_eos", 1, "1 (int)"),
    ],
)
def test_each_bad_sampling_field_is_named_with_its_value(field, value, shown):
    error = error_of(with_sampling(**{field: value}))
    assert error is not None and field in error and shown in error, error


@pytest.mark.parametrize(
    "prompt, words",
    [
        (None, ["prompt_token_ids", "None"]),
        ("hello", ["prompt_token_ids", "'hello' (str)"]),
        ([], ["empty prompt_token_ids"]),
        ([1, 2.0], ["prompt_token_ids", "2.0 (float)"]),
        ([1, True], ["prompt_token_ids", "True (bool)"]),
        ([1, [2]], ["prompt_token_ids", "[2] (list)"]),
        ([1, "2"], ["prompt_token_ids", "'2' (str)"]),
        ([1, -1], ["out of range", "[-1]"]),
        ([1, VOCAB], ["out of range", f"[0, {VOCAB})"]),
        ([1] * MAX_LEN, ["max_model_len"]),
    ],
)
def test_a_bad_prompt_is_named(prompt, words):
    error = error_of(Request("r", prompt, SamplingParams()))
    assert error is not None and all(w in error for w in words), error


def test_request_id_sampling_and_the_request_itself_must_have_their_types():
    assert "request_id must be a str, got 7 (int)" in error_of(Request(7, [1], SamplingParams()))
    assert "sampling must be SamplingParams" in error_of(Request("r", [1], {"max_tokens": 4}))
    assert "request must be a Request" in error_of({"request_id": "d", "prompt_token_ids": [1]})
    assert "request must be a Request, got None" in error_of(None)


def test_a_request_that_needs_more_kv_than_the_pool_holds_is_rejected():
    error = request_error(Request("r", [1] * 10, SamplingParams(max_tokens=10)), VOCAB, MAX_LEN, max_kv_tokens=16)
    assert "KV" in error and "20" in error


def test_validation_never_raises_even_on_hostile_objects():
    class Hostile(list):
        def __len__(self):
            raise RuntimeError("boom")

        def __repr__(self):
            raise RuntimeError("no repr")

    assert "boom" in error_of(Request("r", Hostile([1]), SamplingParams()))
    assert "<unprintable>" in error_of(Request("r", [1], SamplingParams(max_tokens=Hostile())))


def test_an_error_output_is_named_by_its_request_id_or_its_position():
    assert output_id(Request("mine", [1]), 3) == "mine"
    assert output_id({"request_id": "from-dict"}, 3) == "from-dict"
    assert output_id({"prompt_token_ids": [1]}, 3) == "<index 3>"
    assert output_id(Request(7, [1]), 3) == "<index 3>"  # a non-str id could clash with a real one
    assert output_id(None, 0) == "<index 0>"
    assert (prompt_len(Request("r", [1, 2])), prompt_len(Request("r", None)), prompt_len("x")) == (2, 0, 0)


def test_scored_sequences_are_checked_and_become_plain_ints():
    assert checked_sequences([(1, np.int64(2))], VOCAB, MAX_LEN) == [[1, 2]]
    for bad, words in [
        ([[1], []], "empty sequence 1"),
        ([[1, VOCAB]], "out of range"),
        ([[1, 2.5]], "2.5 (float)"),
        ([None], "sequence 0 must be a list or tuple"),
        ([[1] * (MAX_LEN + 1)], "exceeds max_model_len"),
        ("12", "sequences must be a list or tuple"),
    ]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            checked_sequences(bad, VOCAB, MAX_LEN)
