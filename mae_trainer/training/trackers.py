"""Experiment trackers of the training commands (``--report-to``), through accelerate's tracker classes.

``--report-to`` is a comma list of ``tensorboard`` and ``wandb``, or ``all`` (both) or ``none``. ``all``
means every tracker this library supports, not accelerate's "every tracker installed": a run should not start
logging to MLflow or Comet because their packages happen to be importable, and a requested tracker whose
package is missing is refused before training (accelerate would drop it silently).

Where each tracker writes: TensorBoard to ``OUTPUT/tensorboard/``; Weights & Biases to ``OUTPUT/wandb/`` (its
``dir``), project ``$WANDB_PROJECT`` or ``mae-trainer``, run name the output folder's name, job type the
command. ``WANDB_MODE=offline`` keeps the run on disk (``wandb sync OUTPUT/wandb/offline-run-*`` uploads it).
A resumed run (``--resume``) continues the W&B run of the output folder: the fresh run writes its id to
``OUTPUT/wandb/run_id``, and a resumed one passes that id to ``wandb.init`` with ``resume="allow"`` (offline,
each start writes its own ``offline-run-*`` folder under the one id; ``wandb sync`` uploads them into it).

The parsing and the installed-package check import nothing heavy (the CLI runs them before torch).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import string
from pathlib import Path

TRACKERS = ("tensorboard", "wandb")
WANDB_PROJECT = "mae-trainer"
WANDB_RUN_ID = Path("wandb") / "run_id"  # under the output folder


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


def make_trackers(names: tuple[str, ...], output_dir: Path, command: str) -> list:
    """accelerate tracker objects for ``names`` writing under ``output_dir`` (started by
    ``Accelerator.init_trackers`` on the main process only)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    trackers = []
    if "tensorboard" in names:
        trackers.append(TensorBoardTracker("tensorboard", output_dir))  # OUTPUT/tensorboard/
    if "wandb" in names:
        project = os.environ.get("WANDB_PROJECT") or WANDB_PROJECT
        name = Path(output_dir).resolve().name
        trackers.append(WandBTracker(project, name=name, job_type=command, dir=str(output_dir)))
    return trackers


def wandb_run_id(output_dir: Path, *, fresh: bool) -> str:
    """The W&B run id of a run in ``output_dir``: a resumed run's is the one stored by the run it resumes; a
    fresh run (or a resumed one with no id stored) gets a new id, stored atomically for later resumes."""
    path = Path(output_dir) / WANDB_RUN_ID
    if not fresh and path.is_file():
        stored = path.read_text().strip()
        if stored:
            return stored
    alphabet = string.ascii_lowercase + string.digits  # wandb's own id alphabet (8 characters)
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    from ..publish import publish_text

    publish_text(path, run_id + "\n")
    return run_id


def start_trackers(
    accelerator, command: str, config: dict, output_dir: Path, *, fresh: bool, resumed_at: int | None = None
) -> None:
    """``accelerator.init_trackers``, the W&B tracker given the output folder's run id first (on the main
    process, the one that starts the trackers): a resumed run logs into the run it resumes. A run resumed
    at step ``resumed_at`` opens TensorBoard's writer with ``purge_step`` one past it: readers discard the
    events past that step that the interrupted run wrote after its checkpoint, so each step shows once."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    if accelerator.is_main_process:
        for tracker in accelerator.log_with:
            if isinstance(tracker, WandBTracker):  # its kwargs go to wandb.init when it starts
                tracker.init_kwargs.update(id=wandb_run_id(output_dir, fresh=fresh), resume="allow")
            if isinstance(tracker, TensorBoardTracker) and resumed_at is not None:  # → SummaryWriter
                tracker.init_kwargs.update(purge_step=resumed_at + 1)
    accelerator.init_trackers(command, config=config)


def drop_records_after(metrics_file: Path, step: int) -> None:
    """Keep the records of ``metrics_file`` (JSON lines with a ``step``) up to ``step``, replacing the file
    atomically: a run resumed at ``step`` writes the later ones again. A line cut short by a kill (not
    JSON) goes too."""
    import json

    from ..publish import publish_text

    if not metrics_file.is_file():
        return
    kept = []
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    publish_text(metrics_file, "".join(kept))


def log_image(accelerator, tag: str, picture, step: int) -> None:
    """An ``(H, W, 3)`` uint8 image to every tracker that takes images (main process only)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({tag: picture[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({tag: [picture]}, step=step)
