"""Options of engine=openai: where the server is, how to reach it, and (optionally) how to start it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.base import EngineOptions


@dataclass
class OpenaiOptions(EngineOptions):
    name: str = "openai"
    base_url: str = "http://127.0.0.1:8000/v1"  # the server's OpenAI API root (…/v1)
    model: str | None = None  # the served model name; None = the first one /v1/models lists
    # NAME of the environment variable holding the API key, sent as `Authorization: Bearer`; the key itself
    # is never an option, a result or a log line. (Not `api_key_env`: a key named "api key" is refused on the
    # command line and redacted from results as a credential.)
    key_env: str = "OPENAI_API_KEY"
    # start the server for the cell: a list of args or one shell-style string (split with shlex); it runs in
    # its own process group, its output goes to the cell's worker log, and close() stops it
    server_command: Any = None
    server_start_timeout_s: float = 600.0  # until /health or /v1/models answers
    max_concurrency: int | None = 256  # generate(): requests in flight at once; None = all of them
    timeout_s: float = 600.0  # per request, connect to last byte
    tokenizer: str | None = None  # counts tokens when the server sends no token ids; None = the model's folder
    return_token_ids: bool = True  # ask for token ids in each chunk (vLLM >= 0.10.2 `return_token_ids`)
    # "token_ids" (exact lengths), or "text": the prompt decoded with the tokenizer, for servers that take only
    # text (llama-cpp-python's); the server re-tokenizes it, so its prompt length may differ slightly
    prompt_as: str = "token_ids"

    def __post_init__(self) -> None:
        self.check_positive("max_concurrency")
        for key in ("server_start_timeout_s", "timeout_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"engine.{key} must be > 0, got {getattr(self, key)}")
        cmd = self.server_command
        if cmd is not None and not isinstance(cmd, str) and not (
            isinstance(cmd, (list, tuple)) and cmd and all(isinstance(a, (str, int, float)) for a in cmd)
        ):
            raise ValueError(f"engine.server_command must be null, a string or a non-empty list of args, got {cmd!r}")
        if self.prompt_as not in ("token_ids", "text"):
            raise ValueError(f"engine.prompt_as must be token_ids or text, got {self.prompt_as!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"engine.base_url must start with http:// or https://, got {self.base_url!r}")
