"""Reject a bad request with a clear message instead of failing the whole batch.

Every engine checks every request with `request_error` before it queues or runs any of them, so a bad
request (wrong types included) becomes that request's own error output and never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engines.base import Arrivals, Request, RequestOutput, SamplingParams, is_finite_real, is_int, show


def request_error(
    request: Any, vocab_size: int, max_model_len: int | None, max_kv_tokens: int | None = None
) -> str | None:
    """Why `request` cannot run, or None when it can (every engine applies the same checks). Never raises."""
    try:
        return _request_error(request, vocab_size, max_model_len, max_kv_tokens)
    except Exception as exc:  # a hostile object (broken __len__, __eq__...) is that request's error too
        return f"request could not be validated: {type(exc).__name__}: {exc}"


def _request_error(request: Any, vocab_size: int, max_model_len: int | None, max_kv_tokens: int | None) -> str | None:
    if not isinstance(request, Request):
        return f"request must be a Request, got {show(request)}"
    if not isinstance(request.request_id, str):
        return f"request_id must be a str, got {show(request.request_id)}"
    sampling = request.sampling
    if not isinstance(sampling, SamplingParams):
        return f"sampling must be SamplingParams, got {show(sampling)}"
    try:
        sampling.validate()
    except ValueError as exc:
        return f"invalid sampling parameters: {exc}"
    prompt = request.prompt_token_ids
    error = tokens_error("prompt_token_ids", prompt, vocab_size)
    if error is not None:
        return error
    if max_model_len is not None and len(prompt) >= max_model_len:
        return (f"prompt of {len(prompt)} tokens leaves no room to generate within the model's context "
                f"(max_model_len={max_model_len})")  # fmt: skip
    needed = min(len(prompt) + sampling.max_tokens, max_model_len or len(prompt) + sampling.max_tokens)
    if max_kv_tokens is not None and needed > max_kv_tokens:
        return f"request needs KV for {needed} tokens but the whole KV pool holds {max_kv_tokens}"
    return None


def tokens_error(name: str, tokens: Any, vocab_size: int) -> str | None:
    """Why `tokens` is not a non-empty list or tuple of token ids in [0, vocab_size), or None."""
    if not isinstance(tokens, (list, tuple)):
        return f"{name} must be a list or tuple of ints, got {show(tokens)}"
    if len(tokens) == 0:
        return f"empty {name}: at least one token is needed"
    not_ints = [t for t in tokens if not is_int(t)]
    if not_ints:
        return f"{name} must hold only ints; {len(not_ints)} entries are not, e.g. {show(not_ints[0])}"
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        return f"{name} has {len(bad)} token ids out of range [0, {vocab_size}), e.g. {[int(t) for t in bad[:3]]}"
    return None


def output_id(request: Any, index: int) -> str:
    """The request_id an output for `request` carries: its own when it is a str (a dict's "request_id" key
    too), else a placeholder naming its position in the call. Never raises."""
    try:
        found = request.get("request_id") if isinstance(request, dict) else getattr(request, "request_id", None)
    except Exception:
        found = None
    return found if isinstance(found, str) else f"<index {index}>"


def prompt_len(request: Any) -> int:
    """The prompt length an error output reports: 0 when there is no usable prompt. Never raises."""
    try:
        prompt = getattr(request, "prompt_token_ids", None)
        return len(prompt) if isinstance(prompt, (list, tuple)) else 0
    except Exception:
        return 0


def checked_sequences(sequences: Any, vocab_size: int, max_model_len: int | None) -> list[list[int]]:
    """`score()`'s input as lists of plain ints; raises ValueError naming the first bad sequence."""
    if not isinstance(sequences, (list, tuple)):
        raise ValueError(f"score: sequences must be a list or tuple of token-id sequences, got {show(sequences)}")
    checked = []
    for index, seq in enumerate(sequences):
        error = tokens_error(f"sequence {index}", seq, vocab_size)
        if error is None and max_model_len is not None and len(seq) > max_model_len:
            error = f"sequence {index} of {len(seq)} tokens exceeds max_model_len={max_model_len}"
        if error is not None:
            raise ValueError(f"score: {error}")
        checked.append([int(t) for t in seq])
    return checked


def check_arrivals(arrivals: Any, num_requests: int) -> None:
    """Raise ValueError unless `arrivals` gives one finite offset >= 0 per request and a concurrency
    limit that is None or an int >= 1 (a bad schedule is the caller's error, not one request's)."""
    if not isinstance(arrivals, Arrivals):
        raise ValueError(f"serve: arrivals must be an Arrivals, got {show(arrivals)}")
    offsets = arrivals.offsets_s
    if not isinstance(offsets, (list, tuple)) or len(offsets) != num_requests:
        raise ValueError(f"serve: arrivals.offsets_s must be a list of {num_requests} offsets (one per request), "
                         f"got {show(offsets)}")  # fmt: skip
    bad = [o for o in offsets if not is_finite_real(o) or o < 0]
    if bad:
        raise ValueError(f"serve: arrival offsets must be finite numbers >= 0 (seconds), e.g. not {show(bad[0])}")
    limit = arrivals.max_concurrency
    if limit is not None and (not is_int(limit) or limit < 1):
        raise ValueError(f"serve: arrivals.max_concurrency must be None or an int >= 1, got {show(limit)}")


def reject_bad(
    requests: Sequence[Any], arrival: float, check: Callable[[Any], str | None],
    progress: Callable[[int], None] | None = None,
) -> list[RequestOutput | None]:
    """Check every request before any runs: an error output for each one `check` rejects, None for the others;
    the rejected ones count as finished for `progress`."""
    outputs: list[RequestOutput | None] = []
    for index, request in enumerate(requests):
        error = check(request)
        outputs.append(None if error is None else
                       RequestOutput(output_id(request, index), prompt_len(request), [], [], arrival, "error", error))
    rejected = sum(output is not None for output in outputs)
    if progress and rejected:
        progress(rejected)
    return outputs
