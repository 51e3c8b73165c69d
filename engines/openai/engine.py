"""`OpenaiEngine`: an OpenAI-compatible completions server (vLLM, SGLang, TGI, llama.cpp, infermatrix-serve)
behind the project's contract, over streaming HTTP.

`serve()` sends each request at its offset, at most `max_concurrency` in flight (asyncio + aiohttp);
`generate()` is `serve()` with every offset 0. Every technique is the server's business: this engine declares
none, so `technique_applied` records null (not chosen by the harness) and asking for any value is a skipped
cell rather than a claim the harness cannot check.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from engines.base import (
    Arrivals,
    Engine,
    ModelSpec,
    ProgressFn,
    Request,
    RequestOutput,
    ScoredSequence,
    Technique,
    now,
)
from engines.openai.client import Streamed, error_message, request_body, stream_completion
from engines.openai.config import OpenaiOptions
from engines.openai.launcher import ServerProcess

GREEDY_TOLERANCE = 1e-4  # a token is the argmax when its logprob is the top-1 logprob, within rounding


class OpenaiEngine(Engine):
    name: ClassVar[str] = "openai"
    supports: ClassVar[dict[str, tuple[Any, ...]]] = {}  # the server decides; nothing is controlled from here
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: ModelSpec, technique: Technique, options: OpenaiOptions, device: str) -> None:
        self.options, self.spec = options, model
        self.url = options.base_url.rstrip("/")
        self.root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        key = os.environ.get(options.key_env) if options.key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.sources: Counter[str] = Counter()  # how each request's tokens were counted
        self.counts = {"requests": 0, "requests_failed": 0, "usage_mismatches": 0}
        self._tokenizer: Any = None
        self.server = None
        if options.server_command is not None:
            self.server = ServerProcess(options.server_command, [f"{self.root}/health", f"{self.url}/models"],
                                        self.headers, options.server_start_timeout_s)  # fmt: skip
        try:
            self.model_name = options.model or self.first_model()
        except BaseException:
            self.close()
            raise

    # -- plumbing ----------------------------------------------------------------------------------
    def get_json(self, url: str, timeout_s: float = 10.0) -> Any:
        with urllib.request.urlopen(urllib.request.Request(url, headers=self.headers), timeout=timeout_s) as r:
            return json.loads(r.read())

    def first_model(self) -> str:
        try:
            data = self.get_json(f"{self.url}/models").get("data") or []
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise RuntimeError(f"{self.url}/models: {error_message(exc.code, body)}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeError(f"no OpenAI-compatible server answers at {self.url} ({exc}); start one or set "
                               "engine.server_command") from None  # fmt: skip
        if not data:
            raise RuntimeError(f"{self.url}/models lists no model; set engine.model")
        return str(data[0]["id"])

    def tokenizer(self) -> Any:
        path = self.options.tokenizer or (self.spec.path if self.spec.path and Path(self.spec.path).is_dir() else None)
        if self._tokenizer is None and path:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(path)
        return self._tokenizer

    # -- generation --------------------------------------------------------------------------------
    def generate(self, requests: Seq[Request], progress: ProgressFn | None = None) -> list[RequestOutput]:
        return self.serve(requests, Arrivals([0.0] * len(requests), self.options.max_concurrency), progress)

    def serve(
        self, requests: Seq[Request], arrivals: Arrivals, progress: ProgressFn | None = None
    ) -> list[RequestOutput]:
        if len(arrivals.offsets_s) != len(requests):
            raise ValueError(f"{len(arrivals.offsets_s)} arrival offsets for {len(requests)} requests")
        if not requests:
            return []
        return asyncio.run(self._serve(list(requests), arrivals, progress))

    async def _serve(
        self, requests: list[Request], arrivals: Arrivals, progress: ProgressFn | None
    ) -> list[RequestOutput]:
        slots = asyncio.Semaphore(arrivals.max_concurrency or len(requests))
        url = f"{self.url}/completions"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            start = asyncio.get_running_loop().time()

            async def one(request: Request, offset: float) -> RequestOutput:
                await asyncio.sleep(max(0.0, start + offset - asyncio.get_running_loop().time()))
                async with slots:  # a due request also waits for a free slot; arrival_time says when it went
                    try:
                        text = self.tokenizer().decode(request.prompt_token_ids) if self.options.prompt_as == "text" else None
                        body = request_body(request, self.model_name, self.options.return_token_ids, text)
                    except Exception as exc:
                        streamed = Streamed(arrival_time=now(), error=f"bad request: {type(exc).__name__}: {exc}")
                    else:
                        streamed = await stream_completion(session, url, body, self.headers, self.options.timeout_s)
                out = self.output(request, streamed)
                if progress is not None:
                    progress(1)
                return out

            return list(await asyncio.gather(*(one(r, o) for r, o in zip(requests, arrivals.offsets_s))))

    def output(self, request: Request, got: Streamed) -> RequestOutput:
        self.counts["requests"] += 1
        ids, times, source = self.tokens(got)
        reason, error = got.finish_reason, got.error
        if error is None and reason not in ("stop", "length"):
            error = f"the server ended the request with finish_reason={reason!r}"
        if error is not None:
            self.counts["requests_failed"] += 1
            reason = "error"
        elif source:
            self.sources[source] += 1
            done = (got.usage or {}).get("completion_tokens")
            self.counts["usage_mismatches"] += done is not None and done != len(ids)
        prompt_len = len(request.prompt_token_ids) if isinstance(request.prompt_token_ids, (list, tuple)) else 0
        return RequestOutput(request.request_id, prompt_len, ids, times, got.arrival_time, reason, error)

    def tokens(self, got: Streamed) -> tuple[list[int], list[float], str | None]:
        """Token ids and per-token times, and how they were counted: from the server's ids, by tokenizing
        the streamed text (a chunk's tokens = tokens of the text so far minus those before), or one per chunk."""
        if not got.ids:
            return [], [], None
        if all(ids is not None for ids in got.ids):
            ids = [t for chunk in got.ids for t in chunk]  # type: ignore[union-attr]
            times = [s for chunk, s in zip(got.ids, got.times) for _ in chunk]  # type: ignore[union-attr]
            return ids, times, "server_token_ids"
        tok = self.tokenizer()
        if tok is None:
            return [-1] * len(got.texts), list(got.times), "chunks"
        ids = list(tok.encode("".join(got.texts), add_special_tokens=False))
        times, text, counted = [], "", 0
        for chunk, stamp in zip(got.texts, got.times):
            text += chunk
            n = len(tok.encode(text, add_special_tokens=False))
            times += [stamp] * max(0, n - counted)
            counted = max(counted, n)
        return ids, (times + [got.times[-1]] * len(ids))[: len(ids)], "tokenizer"

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, sequences: Seq[Seq[int]]) -> list[ScoredSequence]:
        return asyncio.run(self._score([[int(t) for t in s] for s in sequences]))

    async def _score(self, sequences: list[list[int]]) -> list[ScoredSequence]:
        slots = asyncio.Semaphore(self.options.max_concurrency or len(sequences) or 1)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(seq: list[int]) -> ScoredSequence:
                body = {"model": self.model_name, "prompt": seq, "max_tokens": 1, "temperature": 0.0, "echo": True,
                        "logprobs": 1}  # fmt: skip
                async with slots, session.post(f"{self.url}/completions", json=body, headers=self.headers,
                                               timeout=aiohttp.ClientTimeout(total=self.options.timeout_s)) as resp:
                    text = await resp.text()
                if resp.status != 200:
                    raise NotImplementedError(f"engine 'openai': {self.url} did not score a sequence with echo + "
                                              f"logprobs ({error_message(resp.status, text)})")  # fmt: skip
                return scored(json.loads(text), len(seq), self.url)

            return list(await asyncio.gather(*(one(s) for s in sequences)))

    # -- the rest of the contract --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "base_url": self.url, "served_model": self.model_name,
            "token_count_source": ",".join(sorted(self.sources)) or None, "token_count_requests": dict(self.sources),
            **self.counts, "server_started_by_engine": self.server is not None,
        }  # fmt: skip
        try:  # infermatrix-serve's counters (peak running sequences...); other servers have none here
            server = self.get_json(f"{self.root}/stats", timeout_s=5)
            if isinstance(server, dict):
                stats["server"] = server
        except Exception:
            pass
        return stats

    @property
    def eos_token_id(self) -> int | None:
        """From the model folder the harness resolved (the server's own model should be the same)."""
        for name in ("generation_config.json", "config.json"):
            path = Path(self.spec.path or "", name)
            if self.spec.path and path.is_file():
                ids = json.loads(path.read_text()).get("eos_token_id")
                ids = ids[0] if isinstance(ids, list) and ids else ids
                if isinstance(ids, int):
                    return ids
        return None

    def memory_monitor(self, device: str) -> Any:
        return ServerSideMemory()

    def close(self) -> None:
        if self.server is not None:
            status = self.server.stop()
            print(f"[openai] server stopped (exit status {status})", flush=True)
            self.server = None


class ServerSideMemory:
    """This process holds no model: its memory says nothing about the server's, so none is reported."""

    def __enter__(self) -> ServerSideMemory:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def result(self) -> dict[str, Any]:
        return {"peak_memory_note": "engine=openai: the server's memory is not measured by the client"}


def scored(payload: dict[str, Any], n: int, url: str) -> ScoredSequence:
    """ScoredSequence from an echo + logprobs response: the first n positions are the prompt's."""
    logprobs = ((payload.get("choices") or [{}])[0] or {}).get("logprobs") or {}
    values = (logprobs.get("token_logprobs") or [])[:n]
    if len(values) < n or any(v is None for v in values[1:]):
        raise NotImplementedError(f"engine 'openai': {url} returned no prompt logprobs for echo=true (scoring "
                                  "needs a server that supports echo with logprobs, e.g. vLLM)")  # fmt: skip
    greedy = logprobs.get("is_greedy")  # infermatrix-serve's extension
    if greedy is None:
        tops = (logprobs.get("top_logprobs") or [])[:n]
        if len(tops) < n or any(not t for t in tops[1:]):
            raise NotImplementedError(f"engine 'openai': {url} returned no top_logprobs, so greediness is unknown")
        greedy = [None] + [v >= max(t.values()) - GREEDY_TOLERANCE for v, t in zip(values[1:], tops[1:])]
    return ScoredSequence([float(v) for v in values[1:]], [bool(g) for g in greedy[1:n]])
