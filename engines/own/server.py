"""The OpenAI-compatible HTTP side of `infermatrix-serve` (the command: engines/own/serve_cli.py).

`POST /v1/completions` (token-id or string prompt; `stream` as SSE; vLLM's extensions `top_k`, `ignore_eos`,
`stop_token_ids`, and `choices[0].token_ids` in every chunk), `GET /health`, `GET /v1/models`, `GET /stats`
(the engine's counters: peak running sequences...). One thread runs the engine (engines/own/server_loop.py);
each HTTP request gets a thread that streams what the loop pushes. With an API key set, /v1 and /stats need
`Authorization: Bearer <key>`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engines.base import Request, SamplingParams, is_int
from engines.own.server_loop import Event, ServingLoop

SCORE_TIMEOUT_S = 600.0


class BadRequest(ValueError):
    pass


def sampling_from(body: dict[str, Any]) -> SamplingParams:
    """The request's sampling parameters (OpenAI's defaults, vLLM's extensions); BadRequest if unsupported."""
    if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
        raise BadRequest("only n=1 (and best_of=1) is supported")
    if body.get("stop"):
        raise BadRequest("stop strings are not supported; use stop_token_ids")
    top_k = body.get("top_k", 0)
    params = SamplingParams(
        max_tokens=body.get("max_tokens", 16), temperature=body.get("temperature", 1.0),
        top_k=0 if top_k in (None, -1) else top_k, top_p=body.get("top_p", 1.0), seed=body.get("seed"),
        stop_token_ids=tuple(body.get("stop_token_ids") or ()), ignore_eos=body.get("ignore_eos", False),
    )  # fmt: skip
    try:
        params.validate()
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return params


class App:
    """What the handlers share: the loop, the tokenizer, the served name and the key."""

    def __init__(self, loop: ServingLoop, tokenizer: Any, model_name: str, api_key: str | None) -> None:
        self.loop, self.tokenizer, self.model_name, self.api_key = loop, tokenizer, model_name, api_key

    def prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (list, str)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise BadRequest("this server has no tokenizer: send the prompt as a list of token ids")
            return list(self.tokenizer.encode(prompt, add_special_tokens=False))
        if isinstance(prompt, list) and all(is_int(t) for t in prompt):
            return prompt
        raise BadRequest("prompt must be a string or a list of token ids (one prompt per request)")

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None and ids else ""


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass made by make_server
    server_version = "infermatrix-serve"

    def log_message(self, format: str, *args: Any) -> None:  # one short line per request, no headers
        sys.stderr.write(f"[serve] {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        self.send_json(status, {"object": "error", "error": {"message": message, "type": kind, "code": status},
                                "message": message, "type": kind, "code": status})  # fmt: skip

    def authorized(self) -> bool:
        if self.app.api_key and self.headers.get("Authorization") != f"Bearer {self.app.api_key}":
            self.send_error_json(401, "missing or wrong API key (Authorization: Bearer ...)", "AuthenticationError")
            return False
        return True

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self.send_json(200, {"status": "ok"})
        elif path in ("/v1/models", "/stats", "/metrics") and not self.authorized():
            return
        elif path == "/v1/models":
            loop = self.app.loop
            self.send_json(200, {"object": "list", "data": [{
                "id": self.app.model_name, "object": "model", "owned_by": "infermatrix",
                "max_model_len": loop.llm.config.max_model_len}]})  # fmt: skip
        elif path in ("/stats", "/metrics"):
            self.send_json(200, self.app.loop.stats())
        else:
            self.send_error_json(404, f"no route {path}", "NotFoundError")

    def do_POST(self) -> None:
        if self.path.split("?")[0].rstrip("/") != "/v1/completions":
            return self.send_error_json(404, f"no route {self.path} (only /v1/completions)", "NotFoundError")
        if not self.authorized():
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            prompt = self.app.prompt_ids(body.get("prompt"))
            if body.get("echo"):
                return self.score(body, prompt)
            request = Request(f"cmpl-{uuid.uuid4().hex}", prompt, sampling_from(body))
            error = self.app.loop.check(request)
            if error is not None:
                raise BadRequest(error)
        except (BadRequest, ValueError, TypeError) as exc:
            return self.send_error_json(400, str(exc))
        stream = self.app.loop.submit(request)
        try:
            if body.get("stream"):
                self.stream(request, stream.events, bool((body.get("stream_options") or {}).get("include_usage")))
            else:
                self.complete(request, stream.events)
        except (BrokenPipeError, ConnectionResetError):
            stream.cancelled = True  # the client went away; its sequence runs out, unseen

    def chunk(self, request_id: str, text: str, ids: list[int], finish: str | None) -> dict[str, Any]:
        return {"id": request_id, "object": "text_completion", "created": int(time.time()),
                "model": self.app.model_name, "choices": [{"index": 0, "text": text, "token_ids": ids,
                                                           "logprobs": None, "finish_reason": finish}]}  # fmt: skip

    def usage(self, request: Request, generated: int) -> dict[str, int]:
        prompt = len(request.prompt_token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    def stream(self, request: Request, events: Any, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        ids: list[int] = []
        text_sent = ""
        while True:
            event: Event = events.get()
            if event.error is not None:
                self.sse({"object": "error", "error": {"message": event.error, "type": "EngineError", "code": 500}})
                break
            ids += event.token_ids
            text = self.app.decode(ids)
            held = text.endswith("\ufffd") and event.finish_reason is None  # half a UTF-8 character: wait
            delta = "" if held else text[len(text_sent) :]
            text_sent = text_sent if held else text
            self.sse(self.chunk(request.request_id, delta, event.token_ids, event.finish_reason))
            if event.finish_reason is not None:
                break
        if include_usage:
            self.sse({"id": request.request_id, "object": "text_completion", "created": int(time.time()),
                      "model": self.app.model_name, "choices": [], "usage": self.usage(request, len(ids))})  # fmt: skip
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def sse(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def complete(self, request: Request, events: Any) -> None:
        ids: list[int] = []
        while True:
            event: Event = events.get()
            if event.error is not None:
                return self.send_error_json(500, event.error, "EngineError")
            ids += event.token_ids
            if event.finish_reason is not None:
                break
        payload = self.chunk(request.request_id, self.app.decode(ids), ids, event.finish_reason)
        self.send_json(200, {**payload, "usage": self.usage(request, len(ids))})

    def score(self, body: dict[str, Any], prompt: list[int]) -> None:
        """echo + logprobs: the prompt's teacher-forced log-probabilities; nothing is generated."""
        if body.get("logprobs") is None or body.get("max_tokens", 16) not in (0, 1) or body.get("stream"):
            raise BadRequest("echo is supported only for scoring: logprobs set, max_tokens 0 or 1, no stream")
        error = self.app.loop.check(Request("score", prompt, SamplingParams()))
        if error is not None:
            raise BadRequest(error)
        scored = self.app.loop.score(prompt, SCORE_TIMEOUT_S)
        tokens = [self.app.decode([t]) for t in prompt]
        logprobs = {"tokens": tokens, "token_ids": prompt, "token_logprobs": [None, *scored.logprobs],
                    "is_greedy": [None, *scored.is_greedy], "top_logprobs": None,  # is_greedy: our extension
                    "text_offset": None}  # fmt: skip
        payload = self.chunk(f"cmpl-{uuid.uuid4().hex}", "".join(tokens), [], "length")
        payload["choices"][0]["logprobs"] = logprobs
        self.send_json(200, {**payload, "usage": {"prompt_tokens": len(prompt), "completion_tokens": 0,
                                                  "total_tokens": len(prompt)}})  # fmt: skip


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: a burst of connections must not wait on SYN retries (default 5)


def make_server(app: App, host: str, port: int) -> ThreadingHTTPServer:
    return Server((host, port), type("BoundHandler", (Handler,), {"app": app}))
