"""The serving loop behind `infermatrix-serve`: one thread owns the engine and runs it continuously.

HTTP handler threads never touch the engine: they `submit()` a checked request and read its `Stream`.
The loop thread admits pending requests between steps (continuous batching across HTTP requests), runs
`step()`, and pushes each sequence's new tokens to its stream with the step's host timestamp. A failed step
fails the requests in flight, never the loop. Scoring jobs (echo + logprobs) run when no request is in flight.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engines.base import Request, ScoredSequence, now
from engines.own.scoring import score_sequences
from engines.own.sequence import Sequence, Status

IDLE_WAIT_S = 0.05  # how long the idle loop waits for work before checking whether it should stop


@dataclass(slots=True)
class Event:
    """What one engine step produced for one request: its new tokens, and how it ended (if it did)."""

    token_ids: list[int]
    stamp: float  # perf_counter() when these tokens reached the host
    finish_reason: str | None = None  # "length" | "stop" | "error" once finished
    error: str | None = None


@dataclass(eq=False)
class Stream:
    request: Request
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: bool = False  # the client went away: its tokens are dropped
    seq: Sequence | None = None
    sent: int = 0  # generated tokens already pushed


@dataclass(eq=False)
class ScoreJob:
    tokens: list[int]
    done: queue.Queue = field(default_factory=queue.Queue)  # gets a ScoredSequence or an Exception


class ServingLoop(threading.Thread):
    """Runs `engine.llm` (own's LLMEngine: add_request/step) for requests arriving from other threads."""

    def __init__(self, engine: Any) -> None:
        super().__init__(name="engine-loop", daemon=True)
        llm = getattr(engine, "llm", None)
        if llm is None or not all(hasattr(llm, m) for m in ("add_request", "step", "has_unfinished")):
            raise ValueError(f"engine '{engine.name}' has no step loop (needs .llm with add_request/step)")
        self.engine, self.llm = engine, llm
        self.pending: queue.Queue = queue.Queue()
        self.live: list[Stream] = []
        self.jobs: deque[ScoreJob] = deque()
        self.stopping = threading.Event()
        self.counts = {"requests_total": 0, "requests_finished": 0, "requests_failed": 0, "step_failures": 0,
                       "scored_sequences": 0, "peak_live_requests": 0}  # fmt: skip

    # -- called from HTTP threads --------------------------------------------------------------
    def check(self, request: Request) -> str | None:
        """Why the engine would reject `request` (pure checks: safe from any thread), or None."""
        return self.llm.request_error(request)

    def submit(self, request: Request) -> Stream:
        stream = Stream(request)
        self.pending.put(stream)
        return stream

    def score(self, tokens: list[int], timeout_s: float | None = None) -> ScoredSequence:
        job = ScoreJob(tokens)
        self.pending.put(job)
        result = job.done.get(timeout=timeout_s)
        if isinstance(result, Exception):
            raise result
        return result

    def stats(self) -> dict[str, Any]:
        stats = dict(self.llm.stats())
        stats.update(self.counts, live_requests=len(self.live), waiting_requests=self.pending.qsize())
        return stats

    def stop(self) -> None:
        self.stopping.set()

    # -- the loop thread -------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping.is_set():
            self._admit(block=not self.llm.has_unfinished() and not self.jobs)
            if self.llm.has_unfinished():
                try:
                    self.llm.step()
                except Exception as exc:  # the requests in flight fail; the loop lives on
                    self.counts["step_failures"] += 1
                    self._abort(f"engine step failed: {type(exc).__name__}: {exc}")
                    continue
                self._push()
            elif self.jobs:
                self._run_score(self.jobs.popleft())

    def _admit(self, block: bool) -> None:
        try:
            item = self.pending.get(timeout=IDLE_WAIT_S) if block else self.pending.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, ScoreJob):
                self.jobs.append(item)
            else:
                self._add(item)
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                break
        self.counts["peak_live_requests"] = max(self.counts["peak_live_requests"], len(self.live))

    def _add(self, stream: Stream) -> None:
        self.counts["requests_total"] += 1
        try:
            stream.seq = self.llm.add_request(stream.request)
        except Exception as exc:
            self.counts["requests_failed"] += 1
            stream.events.put(Event([], now(), "error", f"{type(exc).__name__}: {exc}"))
            return
        self.live.append(stream)

    def _push(self) -> None:
        still = []
        for stream in self.live:
            seq = stream.seq
            new = seq.token_ids[seq.prompt_len + stream.sent :]
            finished = seq.status is Status.FINISHED
            if new or finished:
                times = seq.token_times[stream.sent :]
                stamp = times[-1] if times else now()
                stream.sent += len(new)
                if not stream.cancelled:
                    stream.events.put(Event(list(new), stamp, seq.finish_reason if finished else None, seq.error))
            if finished:
                self.counts["requests_failed" if seq.finish_reason == "error" else "requests_finished"] += 1
            else:
                still.append(stream)
        self.live = still

    def _abort(self, reason: str) -> None:
        abort = getattr(self.llm, "abort_all", None)
        if abort is not None:
            try:
                abort(reason)
            except Exception:
                pass
        for stream in self.live:
            self.counts["requests_failed"] += 1
            stream.events.put(Event([], now(), "error", reason))
        self.live = []

    def _run_score(self, job: ScoreJob) -> None:
        try:
            result: Any = score_sequences(self.llm, self.engine.runner, [job.tokens],
                                          self.engine.options.max_num_batched_tokens)[0]  # fmt: skip
            self.counts["scored_sequences"] += 1
        except Exception as exc:
            result = exc
        job.done.put(result)
