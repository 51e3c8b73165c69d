"""Reject a bad request with a clear message instead of failing the whole batch."""

from __future__ import annotations

import numbers

from engines.base import Request, SamplingParams


def request_error(
    request: Request, vocab_size: int, max_model_len: int | None, max_kv_tokens: int | None = None
) -> str | None:
    """Why `request` cannot run, or None when it can (every engine applies the same checks)."""
    sampling = request.sampling
    if not isinstance(sampling, SamplingParams):
        return f"sampling must be SamplingParams, got {type(sampling).__name__}"
    try:
        sampling.validate()
    except ValueError as exc:
        return f"invalid sampling parameters: {exc}"
    if any(not isinstance(t, numbers.Integral) or t < 0 for t in sampling.stop_token_ids):
        return f"stop_token_ids must be non-negative ints, got {sampling.stop_token_ids}"
    prompt = request.prompt_token_ids
    if len(prompt) == 0:
        return "empty prompt: at least one token is needed"
    bad = [t for t in prompt if not isinstance(t, numbers.Integral) or isinstance(t, bool) or not 0 <= t < vocab_size]
    if bad:
        return f"prompt has {len(bad)} token ids out of range [0, {vocab_size}), e.g. {bad[:3]}"
    if max_model_len is not None and len(prompt) >= max_model_len:
        return (f"prompt of {len(prompt)} tokens leaves no room to generate within the model's context "
                f"(max_model_len={max_model_len})")  # fmt: skip
    needed = min(len(prompt) + sampling.max_tokens, max_model_len or len(prompt) + sampling.max_tokens)
    if max_kv_tokens is not None and needed > max_kv_tokens:
        return f"request needs KV for {needed} tokens but the whole KV pool holds {max_kv_tokens}"
    return None
