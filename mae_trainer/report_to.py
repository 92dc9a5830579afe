"""The ``--report-to`` value: its parsing, and the checks that need no tracker imported (the package is
installed; online W&B has credentials), run by the config before torch is imported. The trackers themselves
are ``training/trackers.py``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

TRACKERS = ("tensorboard", "wandb")


def tracker_names(value: str) -> tuple[str, ...]:
    """The trackers of a ``--report-to`` value (``ValueError`` naming what is wrong)."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise ValueError("name at least one tracker, or none")
    chosen: list[str] = []
    for name in names:
        if name not in (*TRACKERS, "all", "none"):
            raise ValueError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}, all, none")
        if name in ("all", "none") and len(names) > 1:
            raise ValueError(f"{name!r} stands alone")
        chosen += TRACKERS if name == "all" else [] if name == "none" else [name]
    return tuple(dict.fromkeys(chosen))


def report_to_problem(value: str | None) -> str | None:
    """What is wrong with a ``--report-to`` value: an unknown name, or a tracker that is not installed."""
    if value is None:
        return None
    try:
        names = tracker_names(value)
    except ValueError as err:
        return str(err)
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed (pip install {' '.join(missing)}, or "
            f"pip install -e '.[{','.join(missing)}]' in a checkout)"
        )
    if "wandb" in names:
        return wandb_login_problem()
    return None


def _wandb_settings() -> dict[str, str]:
    """The ``[default]`` entries of wandb's settings files (the global one, then this folder's
    ``wandb/settings``, which wins), where ``wandb login --host`` and ``wandb offline`` write."""
    import configparser

    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser()
    values: dict[str, str] = {}
    for path in (config_dir / "settings", Path("wandb") / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        if parser.has_section("default"):
            values.update(parser.items("default"))
    return values


def wandb_login_problem() -> str | None:
    """Online W&B without credentials: ``wandb.init`` would stop at a login prompt (or fail) once the model
    is built; said here, before any work. Credentials are looked up where wandb looks, without importing it:
    ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or a netrc entry (``$NETRC``, else ``~/.netrc``) for the
    W&B host (``WANDB_BASE_URL``, the settings' ``base_url``, else api.wandb.ai)."""
    import netrc
    from urllib.parse import urlsplit

    settings = _wandb_settings()
    mode = os.environ.get("WANDB_MODE") or settings.get("mode") or "online"
    disabled = os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes")
    if disabled or mode in ("offline", "dryrun", "disabled"):
        return None
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    base_url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or "https://api.wandb.ai"
    host = urlsplit(base_url.rstrip("/")).netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):
        entry = None
    if entry is not None and entry[2]:
        return None
    return (
        f"online W&B needs an API key and none was found (WANDB_API_KEY, or a {path} entry for {host}): "
        "run `wandb login`, or set WANDB_MODE=offline to keep the run on disk (wandb sync uploads it later)"
    )
