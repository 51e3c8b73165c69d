"""Turning lm-eval's text requests into token sequences an engine can score.

Conventions (the ones lm-eval's own backends follow, so scores are comparable):
- spaces at the end of a context belong to the continuation ("Answer:" + " A"), because
  BPE tokenizers glue a leading space onto the next word;
- both come from encode(context + continuation), split after as many tokens as
  encode(context) has, so the whole text is tokenized as it would be read;
- an empty context is replaced by one prefix token (EOS), so the first word has a condition;
- sequences longer than the model's window lose tokens on the left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Encode = Callable[[str], list[int]]


def split_context(context: str, continuation: str, encode: Encode, prefix_token: int) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) for a log-likelihood request."""
    if not context:
        return [prefix_token], encode(continuation)
    trailing = len(context) - len(context.rstrip())
    if trailing:
        context, continuation = context[:-trailing], context[-trailing:] + continuation
    whole = encode(context + continuation)
    boundary = len(encode(context))  # a merge across the boundary is split where context ended
    return whole[:boundary], whole[boundary:]


def fit_window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], int]:
    """The sequence to score (at most max_length tokens, cut on the left) and how many of its
    last tokens are the continuation. At least one context token stays, to condition on."""
    if not continuation:
        raise ValueError("a log-likelihood request needs a non-empty continuation")
    sequence = list(context) + list(continuation)
    if len(sequence) > max_length:
        sequence = sequence[-max_length:]
    return sequence, min(len(continuation), len(sequence) - 1)


def rolling_windows(tokens: Sequence[int], max_length: int, prefix_token: int) -> list[tuple[list[int], int]]:
    """Cover every token of a document with windows of at most max_length tokens.

    Returns (sequence, n_scored) pairs: the last n_scored tokens of each sequence are new;
    the tokens before them are context, as much of the preceding text as fits. Summing the
    scored log-probabilities gives the document's log-likelihood, each token counted once."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 for rolling windows, got {max_length}")
    full = [prefix_token, *tokens]
    windows = []
    step = max_length - 1  # a window of max_length tokens predicts max_length - 1 of them
    for start in range(1, len(full), step):
        end = min(start + step, len(full))
        windows.append((full[max(0, end - max_length) : end], end - start))
    return windows


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """Text up to (not including) the earliest stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]
