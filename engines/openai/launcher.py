"""Start an inference server for a cell and stop it at the end (`engine.server_command`).

The server runs in its own process group with its output on ours (the cell's worker log), so stopping it
takes its children too: SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

STOP_GRACE_S = 15.0
POLL_S = 0.25


def server_args(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def answers(url: str, headers: dict[str, str]) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ServerProcess:
    def __init__(self, command: Any, health_urls: list[str], headers: dict[str, str], timeout_s: float) -> None:
        self.args = server_args(command)
        print(f"[openai] starting server: {self.args[0]} ({len(self.args) - 1} args)", flush=True)
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not any(answers(url, headers) for url in health_urls):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server command exited with status {self.proc.returncode} before it answered "
                                   f"{' or '.join(health_urls)} (its output is in the cell's worker log)")  # fmt: skip
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer {' or '.join(health_urls)} within "
                                   f"server_start_timeout_s={timeout_s:g}; it was stopped")  # fmt: skip
            time.sleep(POLL_S)
        print(f"[openai] server ready (pid {self.proc.pid})", flush=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after STOP_GRACE_S; returns the exit status."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        self._signal(signal.SIGKILL)  # children that outlived the leader
        return self.proc.returncode

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
