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
    return None


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


def start_trackers(accelerator, command: str, config: dict, output_dir: Path, *, fresh: bool) -> None:
    """``accelerator.init_trackers``, the W&B tracker given the output folder's run id first (on the main
    process, the one that starts the trackers): a resumed run logs into the run it resumes."""
    from accelerate.tracking import WandBTracker

    if accelerator.is_main_process:
        for tracker in accelerator.log_with:
            if isinstance(tracker, WandBTracker):  # its kwargs go to wandb.init when it starts
                tracker.init_kwargs.update(id=wandb_run_id(output_dir, fresh=fresh), resume="allow")
    accelerator.init_trackers(command, config=config)


def log_image(accelerator, tag: str, picture, step: int) -> None:
    """An ``(H, W, 3)`` uint8 image to every tracker that takes images (main process only)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({tag: picture[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({tag: [picture]}, step=step)
