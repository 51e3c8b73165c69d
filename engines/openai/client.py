"""One streamed completion over HTTP: the request body, the SSE chunks read as they arrive, the result.

Each chunk gets one `perf_counter()` read when its line is read; the tokens it carries share it (several
tokens in one chunk arrive together), so inter-token latency is measured between chunks, as vLLM's serving
benchmark does. Token ids come from the chunk (`choices[0].token_ids`: infermatrix-serve, vLLM with
`return_token_ids`) or, when absent, from tokenizing the streamed text afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engines.base import Request, now


@dataclass
class Streamed:
    """What came back for one request: per chunk its text, its token ids (None if the server sent none)."""

    arrival_time: float
    texts: list[str] = field(default_factory=list)
    ids: list[list[int] | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None


def request_body(request: Request, model: str, return_token_ids: bool, text: str | None = None) -> dict[str, Any]:
    """The completions request: the prompt as token ids, or as `text` for servers that take only text."""
    s = request.sampling
    prompt: Any = text if text is not None else [int(t) for t in request.prompt_token_ids]
    body: dict[str, Any] = {
        "model": model, "prompt": prompt, "max_tokens": s.max_tokens,
        "temperature": s.temperature, "top_p": s.top_p, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    if s.top_k > 0:
        body["top_k"] = s.top_k  # extensions: only when they change something, so strict servers accept the rest
    if s.seed is not None:
        body["seed"] = s.seed
    if s.ignore_eos:
        body["ignore_eos"] = True
    if s.stop_token_ids:
        body["stop_token_ids"] = [int(t) for t in s.stop_token_ids]
    if return_token_ids:
        body["return_token_ids"] = True
    return body


def error_message(status: int, text: str) -> str:
    """The server's own message for a failed request (OpenAI, vLLM and llama.cpp shapes), with the status."""
    try:
        payload = json.loads(text)
        inner = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = inner.get("message") if isinstance(inner, dict) else inner
        if not message and isinstance(payload, dict):
            message = payload.get("detail") or payload.get("message")
    except ValueError:
        message = None
    return f"HTTP {status}: {message or text.strip()[:500] or 'no body'}"


async def stream_completion(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float
) -> Streamed:
    out = Streamed(arrival_time=now())
    try:
        async with session.post(url, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:  # fmt: skip
            if resp.status != 200:
                out.error = error_message(resp.status, await resp.text())
                return out
            async for raw in resp.content:
                stamp = now()
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, `event:` lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                add_chunk(out, json.loads(data), stamp)
                if out.error is not None:
                    break
    except Exception as exc:  # connection refused or reset, timeout, a malformed chunk: this request's error
        out.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if out.error is None and out.finish_reason is None:
        out.error = "the stream ended without a finish_reason"
    return out


def add_chunk(out: Streamed, chunk: dict[str, Any], stamp: float) -> None:
    if chunk.get("error") is not None or chunk.get("object") == "error":
        err = chunk.get("error", chunk)
        out.error = f"server error mid-stream: {err.get('message', err) if isinstance(err, dict) else err}"
        return
    if chunk.get("usage"):
        out.usage = chunk["usage"]
    for choice in chunk.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue
        ids = choice.get("token_ids")
        text = choice.get("text") or ""
        if ids or text:
            out.texts.append(text)
            out.ids.append([int(t) for t in ids] if ids is not None else None)
            out.times.append(stamp)
        if choice.get("finish_reason"):
            out.finish_reason = choice["finish_reason"]
