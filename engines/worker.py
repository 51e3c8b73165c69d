"""A cell's engine in its own process: `python -m engines.worker FD PARENT_PID` serves the engine
contract over the socket FD until told to close or until its parent goes away.

Engine-side only (engines/ + torch): no Hydra, W&B or lm-eval, so an engine whose packages live in
another environment can be served by that environment's interpreter. Messages are pickled tuples:
(method, args) in; ("ok", value), ("error", type name, message, traceback) or ("progress", n) out.
"""

from __future__ import annotations

import ctypes
import faulthandler
import importlib
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from engines.base import Engine, EngineOptions, ModelSpec, Technique
from engines.environment import collect_environment, configure_threads, resolve_device

PR_SET_PDEATHSIG = 1


def start_engine(
    engine_path: str, spec: ModelSpec, technique: Technique, options: EngineOptions, device: str,
    threads: int | None, wait_policy: str | None = None,
) -> tuple[Engine, dict[str, Any]]:  # fmt: skip
    """Set threads and the OpenMP wait policy (before torch loads), build the engine ("module:Class"),
    describe the machine."""
    thread_facts = configure_threads(threads, wait_policy)
    device = resolve_device(device)
    module, cls = engine_path.split(":")
    engine = getattr(importlib.import_module(module), cls)(spec, technique, options, device)
    return engine, {"device": device, "threads": thread_facts, "environment": collect_environment(device)}


def serve(conn: Connection) -> None:
    engine: Engine | None = None
    monitor: Any = None
    while True:
        try:
            method, args = conn.recv()
        except EOFError:  # the harness went away
            return
        try:
            if method == "start":
                engine, value = start_engine(*args)
            elif method == "generate":
                value = engine.generate(args[0], progress=lambda n: conn.send(("progress", n)))
            elif method == "serve":
                value = engine.serve(args[0], args[1], progress=lambda n: conn.send(("progress", n)))
            elif method == "memory_start":
                monitor = engine.memory_monitor(args[0]).__enter__()
                value = None
            elif method == "memory_stop":
                monitor.__exit__(None, None, None)
                value = monitor.result()
            elif method == "eos_token_id":
                value = engine.eos_token_id
            elif method == "close":
                value = engine.close() if engine is not None else None
            elif method in ("score", "score_tails", "stats"):
                value = getattr(engine, method)(*args)
            else:
                raise ValueError(f"unknown worker method {method!r}")
        except Exception as exc:
            conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))
        else:
            conn.send(("ok", value))
            if method == "close":
                return


def main() -> None:
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    faulthandler.enable()  # a segfault prints the Python stack into the cell's log
    try:  # die with the harness (Linux), so a killed sweep leaves no engine running
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    serve(Connection(fd))


if __name__ == "__main__":
    main()
