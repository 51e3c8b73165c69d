"""Keep credentials out of what gets tracked: configs, summaries, artifacts and logged argv.

A key is secret when one of its words is a credential word ("hf_token", "WANDB_API_KEY",
"db_password"); "max_num_batched_tokens" or "tokenizer" are not, since whole words are compared, nor
vocabulary tokens ("eos_token_id", "stop_token_ids", "kv_bytes_per_token").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"
_SECRET_WORDS = frozenset({"secret", "password", "passwd", "apikey", "credential", "credentials"})
# "token" names a credential as a key's last word ("hf_token", "WANDB_TOKEN"), unless it is a vocabulary token:
# "eos_token", "kv_bytes_per_token"; before another word it never does ("token_ids", "token_times").
_TOKEN_QUALIFIERS = frozenset({"per", "first", "last", "next", "eos", "bos", "pad", "unk", "special"})
_WORD = re.compile(r"[a-z0-9]+")
_ARG_KEY = re.compile(r"^[+~]*-*(?P<key>[\w.\-/]+)=(?P<value>.*)$", re.DOTALL)
_MIN_SECRET_LEN = 4  # shorter values would redact ordinary text if matched by value


def _words(key: str) -> list[str]:
    """Lower-case words of a key in snake, dotted, kebab or camel case."""
    return _WORD.findall(re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())


def is_secret_key(key: str) -> bool:
    """True for keys naming a credential, compared word by word (snake, dotted, kebab or camel case)."""
    words = _words(key)
    if any(word in _SECRET_WORDS for word in words):
        return True
    if words[-1:] == ["token"] and not (len(words) > 1 and words[-2] in _TOKEN_QUALIFIERS):
        return True
    return any(a == "api" and b == "key" for a, b in zip(words, words[1:]))


def scrub(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like value with every secret key's value replaced by REDACTED, and
    the known `secrets` redacted inside any other string."""
    secrets = tuple(secrets)
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) else scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, str) and secrets:
        return redact_text(value, secrets)
    return value


def secret_values(value: Any) -> set[str]:
    """The string values held under secret keys, anywhere in a JSON-like value."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if is_secret_key(str(k)) and isinstance(v, str) and len(v) >= _MIN_SECRET_LEN:
                found.add(v)
            else:
                found |= secret_values(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= secret_values(v)
    return found


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with each known secret value replaced by REDACTED."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def scrub_argv(argv: list[str], secrets: Iterable[str] = ()) -> list[str]:
    """Command-line args with secret overrides (`+engine.hf_token=x`, `--api-key=x`, `--token x`) redacted."""
    out: list[str] = []
    redact_next = False
    for arg in argv:
        if redact_next:
            out.append(REDACTED)
            redact_next = False
            continue
        match = _ARG_KEY.match(arg)
        if match and is_secret_key(match["key"]):
            out.append(arg[: match.start("value")] + REDACTED)
            continue
        redact_next = arg.startswith("-") and "=" not in arg and is_secret_key(arg.lstrip("-"))
        out.append(redact_text(arg, secrets))
    return out


def scrub_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """A resolved config fit to write to disk: secret keys' values redacted, and those values redacted
    wherever else they were interpolated."""
    return scrub(resolved, secret_values(resolved))


def credential_env_var(key: str) -> str:
    """Where the credential a config key names belongs instead: its environment variable."""
    words = _words(key)
    if "wandb" in words or words[:1] == ["tracker"]:
        return "WANDB_API_KEY"
    if {"hf", "hub", "huggingface"} & set(words) or words[:1] in (["model"], ["eval"]):
        return "HF_TOKEN"
    if "openai" in words or words[:1] == ["engine"]:
        return "OPENAI_API_KEY"
    return "its environment variable (WANDB_API_KEY for W&B, HF_TOKEN for the hub, OPENAI_API_KEY for servers)"


def refuse_secret_overrides(argv: list[str]) -> None:
    """Raise ValueError for a command-line override whose key names a credential (`key=`, `+key=`,
    `++key=`, sweeps too): Hydra writes every override to .hydra/*.yaml before the task starts."""
    for arg in argv:
        match = _ARG_KEY.match(arg)
        if match and is_secret_key(match["key"]):
            key = match["key"].lstrip("-")
            raise ValueError(
                f"refusing '{key}' on the command line: its value would be written in plain text to "
                f".hydra/*.yaml and result.json. Set {credential_env_var(key)} in the environment instead."
            )
