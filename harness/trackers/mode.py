"""Choose the W&B mode: `auto` goes online only for a user who has configured credentials and
whose W&B host answers."""

from __future__ import annotations

import netrc
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0  # wandb.init online without a network waits about 90 s per cell before failing
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


def unreachable_reason(base_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the W&B server at `base_url` answers an HTTP request (any status) within
    `timeout_s`, else why not.

    An HTTP answer, not just a TCP connect: a firewall or proxy may accept connections and never
    reply. The request runs in a thread so that name resolution, which has no timeout of its own,
    cannot hold the cell up either. Proxies from the environment apply, as they do for wandb.
    """
    if not urlparse(base_url).hostname:
        return f"no host in WANDB_BASE_URL {base_url!r}"
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(base_url, method="HEAD"), timeout=timeout_s).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the server answered
        except (OSError, ValueError) as exc:  # URLError, timeouts, TLS errors are OSErrors
            outcome.append(f"{base_url}: {getattr(exc, 'reason', exc)}")

    thread = threading.Thread(target=probe, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"{base_url}: no answer within {timeout_s:g} s"


def choose_mode(mode: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[str, str | None]:
    """(mode for `wandb.init`, why `auto` fell back to offline or None).

    `auto` that would go online on credentials alone first checks that the W&B host
    (WANDB_BASE_URL, default api.wandb.ai) accepts a connection; if not, it logs offline. An
    explicit `online` (tracker.mode or WANDB_MODE) is left as asked.
    """
    resolved = resolve_mode(mode)
    if mode != "auto" or resolved != "online" or os.environ.get("WANDB_MODE", "").lower() in _ENV_MODES:
        return resolved, None
    reason = unreachable_reason(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL), timeout_s)
    if reason is None:
        return "online", None
    return "offline", f"W&B credentials found but the host is unreachable ({reason}): logged offline instead"
