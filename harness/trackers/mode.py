"""Choose the W&B mode: `auto` goes online only for a user who has configured credentials."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_BASE_URL = "https://api.wandb.ai"
_ENV_MODES = {"offline": "offline", "dryrun": "offline", "online": "online", "run": "online", "disabled": "disabled"}


def has_wandb_credentials() -> bool:
    """True when wandb would find credentials without prompting: env vars or a netrc entry for its host.

    Checked here, not through wandb's login code, so it never prompts, writes settings or touches
    the network.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    if not host or not path.is_file():
        return False
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_mode(mode: str) -> str:
    """The mode to pass to `wandb.init`: an explicit mode as is; for `auto`, WANDB_MODE /
    WANDB_DISABLED if the user set them, else online with credentials and offline without."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    env_mode = _ENV_MODES.get(os.environ.get("WANDB_MODE", "").lower())
    if env_mode:
        return env_mode
    return "online" if has_wandb_credentials() else "offline"
