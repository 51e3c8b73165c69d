"""Each cell's engine in a child process (engines/worker.py), with a wall-clock deadline.

A segfault, an OOM kill, an exit or a hang past the deadline in the child becomes a
`CellCrashed` naming the signal or exit status with the tail of the cell's log; a Python
exception in the engine comes back as `EngineError` with its traceback. Either way the harness
process lives on to record the cell and run the next one, and the child's exit frees all of
the cell's memory. The child's output is copied to `worker.log` and echoed to stderr.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from engines.base import (
    Arrivals,
    Engine,
    EngineOptions,
    ModelSpec,
    ProgressFn,
    Request,
    RequestOutput,
    ScoredSequence,
    Technique,
    UnsupportedTechnique,
)
from engines.environment import REPO_ROOT

LOG_TAIL_LINES = 40
CLOSE_GRACE_S = 30.0


class CellCrashed(RuntimeError):
    """The cell's process died or timed out; `log_tail` holds the end of its output."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail


class EngineError(RuntimeError):
    """An exception inside the engine process, re-raised here with the child's traceback."""

    def __init__(self, type_name: str, message: str, child_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.child_traceback = child_traceback


def exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the kernel's OOM killer sends this)" if -returncode == signal.SIGKILL else ""
        return f"killed by {name} ({-returncode}){hint}"
    return f"exited with status {returncode}"


class LogTee(threading.Thread):
    """Copies the child's output to its log file and to our stderr, keeping the last lines."""

    def __init__(self, stream: IO[bytes], path: Path) -> None:
        super().__init__(name="worker-log", daemon=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream, self.log = stream, open(path, "ab")  # opened here: a bad path fails the cell, not the thread
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    def run(self) -> None:
        with self.log as log:
            for line in iter(self.stream.readline, b""):
                log.write(line)
                log.flush()
                text = line.decode(errors="replace")
                sys.stderr.write(text)
                sys.stderr.flush()
                self.tail.append(text.rstrip("\n"))

    def text(self) -> str:
        self.join(timeout=5)  # the child is gone: drain what it wrote last
        return "\n".join(self.tail)


class EngineProcess(Engine):
    """The engine contract, served by a child process that builds and runs the real engine."""

    name = "process"
    supports: dict[str, tuple[Any, ...]] = {}
    defaults: dict[str, Any] = {}

    def __init__(
        self, engine_path: str, spec: ModelSpec, technique: Technique, options: EngineOptions, device: str,
        threads: int | None, wait_policy: str | None, log_path: Path, timeout_s: float | None,
    ) -> None:  # fmt: skip
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        ours, theirs = socket.socketpair()
        python = options.python or sys.executable
        # the harness's interpreter sees what we see; another one (an engine's own venv) only the repository
        paths = sys.path if python == sys.executable else [str(REPO_ROOT)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
        if wait_policy is not None:  # read once, when the child's torch loads; unset, ours is inherited
            env["OMP_WAIT_POLICY"] = wait_policy
        self.proc = subprocess.Popen(
            [python, "-m", "engines.worker", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip
        theirs.close()
        self.conn = Connection(ours.detach())
        self.log = LogTee(self.proc.stdout, log_path)
        self.log.start()
        self.closed = False
        self.facts: dict[str, Any] = self.call("start", engine_path, spec, technique, options, device, threads,
                                                  wait_policy)  # fmt: skip

    def call(self, method: str, *args: Any, progress: ProgressFn | None = None) -> Any:
        try:
            self.conn.send((method, args))
        except OSError:
            self.crashed(method)
        while True:
            if not self.conn.poll(self.wait_s()):
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.kill()
                    raise CellCrashed(f"cell timed out (cell_timeout_s={self.timeout_s:g}) during {method}; "
                                      "its process was killed", self.log.text())  # fmt: skip
                continue
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.crashed(method)
            kind, *payload = message
            if kind == "progress":
                if progress is not None:
                    progress(payload[0])
            elif kind == "ok":
                return payload[0]
            elif payload[0] == "UnsupportedTechnique":
                raise UnsupportedTechnique(payload[1])
            else:
                raise EngineError(*payload)

    def wait_s(self) -> float:
        return 1.0 if self.deadline is None else max(0.0, min(1.0, self.deadline - time.monotonic()))

    def crashed(self, method: str) -> None:
        returncode = self.proc.wait()
        self.closed = True
        raise CellCrashed(f"engine process {exit_description(returncode)} during {method}", self.log.text())

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the child leads its own session: take its children too
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.closed = True

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[RequestOutput]:
        return self.call("generate", list(requests), progress=progress)

    def serve(self, requests: Sequence[Request], arrivals: Arrivals, progress: ProgressFn | None = None) -> list[RequestOutput]:
        return self.call("serve", list(requests), arrivals, progress=progress)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[ScoredSequence]:
        return self.call("score", [list(s) for s in sequences])

    def score_tails(self, sequences: Sequence[Sequence[int]], tails: Sequence[int]) -> list[ScoredSequence]:
        return self.call("score_tails", [list(s) for s in sequences], list(tails))

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    @property
    def eos_token_id(self) -> int | None:
        return self.call("eos_token_id")

    def memory_monitor(self, device: str) -> RemoteMemoryMonitor:
        return RemoteMemoryMonitor(self, device)

    def close(self) -> None:
        """Ask the engine to close and wait for the process to exit (killed if it will not)."""
        if self.closed:
            return
        try:
            if self.proc.poll() is None:
                self.deadline = min(self.deadline or float("inf"), time.monotonic() + CLOSE_GRACE_S)
                self.call("close")
                self.proc.wait(timeout=CLOSE_GRACE_S)
        except (CellCrashed, EngineError, subprocess.TimeoutExpired):
            pass  # the measurement is already complete; a failure to exit cleanly only costs the process
        finally:
            if self.proc.poll() is None:
                self.kill()
            self.closed = True
            self.conn.close()
            self.log.join(timeout=5)


class RemoteMemoryMonitor:
    """MemoryMonitor's interface, run inside the engine's process (whose memory is what counts)."""

    def __init__(self, engine: EngineProcess, device: str) -> None:
        self.engine, self.device = engine, device
        self.measured: dict[str, Any] = {}

    def __enter__(self) -> RemoteMemoryMonitor:
        self.engine.call("memory_start", self.device)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.measured = self.engine.call("memory_stop")

    def result(self) -> dict[str, Any]:
        return self.measured
