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

The value's parsing and the installed-package and login checks are ``mae_trainer/report_to.py`` (import-light:
the config runs them before torch).
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

WANDB_PROJECT = "mae-trainer"
WANDB_RUN_ID = Path("wandb") / "run_id"  # under the output folder


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
