"""How lm-eval's text requests become scored token sequences (pure functions, a toy tokenizer)."""

from __future__ import annotations

from harness.eval.tokens import cut_at_stop, fit_window, rolling_windows, split_context


def char_encode(text: str) -> list[int]:
    """A tokenizer that glues a leading space to the next character, as BPE does with words."""
    ids, i = [], 0
    while i < len(text):
        if text[i] == " " and i + 1 < len(text):
            ids.append(1000 + ord(text[i + 1]))
            i += 2
        else:
            ids.append(ord(text[i]))
            i += 1
    return ids


def test_trailing_context_space_moves_into_the_continuation():
    context, continuation = split_context("Answer: ", "A", char_encode, prefix_token=0)
    assert context == char_encode("Answer:")
    assert continuation == [1000 + ord("A")]  # " A" as one token, as it would be generated


def test_context_and_continuation_concatenate_to_the_whole_encoding():
    context, continuation = split_context("2 + 2 =", " 4", char_encode, prefix_token=0)
    assert context + continuation == char_encode("2 + 2 = 4")
    assert continuation == char_encode(" 4")


def test_empty_context_is_conditioned_on_the_prefix_token():
    assert split_context("", "hello", char_encode, prefix_token=7) == ([7], char_encode("hello"))


def test_long_sequences_lose_tokens_on_the_left():
    sequence, n = fit_window(list(range(10)), [100, 101], max_length=5)
    assert sequence == [7, 8, 9, 100, 101]
    assert n == 2


def test_window_keeps_one_context_token_when_the_continuation_fills_it():
    sequence, n = fit_window([1, 2], [10, 11, 12, 13], max_length=3)
    assert sequence == [11, 12, 13]
    assert n == 2  # token 11 is only context now: it has nothing left to condition on


def test_rolling_windows_score_every_token_exactly_once_with_bounded_windows():
    tokens = list(range(100, 123))
    windows = rolling_windows(tokens, max_length=8, prefix_token=0)
    scored = [t for seq, n in windows for t in seq[-n:]]
    assert scored == tokens
    assert all(len(seq) <= 8 for seq, _ in windows)
    assert windows[0][0][0] == 0  # the first token is conditioned on the prefix token
    assert all(len(seq) == 8 for seq, _ in windows[1:])  # later windows carry full context


def test_generation_is_cut_at_the_earliest_stop_string():
    assert cut_at_stop("x = 4\n\nQuestion: next</s>", ["</s>", "Question:"]) == "x = 4\n\n"
    assert cut_at_stop("no stop here", ["Question:", ""]) == "no stop here"
