"""Checkpoints that survive crashes: ``accelerator.save_state`` into ``step_XXXXXXXX.tmp/``, renamed to
``step_XXXXXXXX/`` only once every rank has written and ``trainer_state.json`` (step, sampler position,
schedule, model config) is in place. A kill at any moment leaves the previous checkpoint intact; leftover
``.tmp`` folders are ignored and cleaned up. The last ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import InputError, TrainingError, is_lost_peer
from ..publish import publish_text

STATE_FILE = "trainer_state.json"
PREFIX = "step_"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and p.suffix != ".tmp" and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_resume(spec: str | None, root: Path) -> Path | None:
    """``--resume auto`` → newest complete checkpoint under ``root`` (None if there is none yet);
    ``--resume PATH`` → that checkpoint, which must be complete."""
    if spec is None:
        return None
    if spec == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / STATE_FILE).is_file():
        raise InputError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    return path


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def save_checkpoint(accelerator, root: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write a checkpoint collectively (every rank calls this) and publish it atomically.

    A write that fails on any rank (disk full, read-only or vanished directory) raises ``TrainingError`` on
    every rank, naming the newest complete checkpoint, which is left untouched, as is every older one.
    """
    final = root / f"{PREFIX}{step:08d}"
    partial = final.with_name(final.name + ".tmp")
    error: Exception | None = None
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if partial.exists():  # left by a killed run; one that cannot be removed is itself the error
                shutil.rmtree(partial)
        except OSError as err:
            error = err
    _raise_if_any_rank_failed(accelerator, error, root, partial, step)
    try:
        accelerator.save_state(str(partial))
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        if is_lost_peer(err):
            raise  # not a write failure: the CLI reports the lost rank
        error = err
    _raise_if_any_rank_failed(accelerator, error, root, partial, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            publish_text(partial / STATE_FILE, json.dumps(state, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
        except OSError as err:
            error = err
    _raise_if_any_rank_failed(accelerator, error, root, partial, step)
    if accelerator.is_main_process:
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(f"{PREFIX}*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _raise_if_any_rank_failed(
    accelerator, error: Exception | None, root: Path, partial: Path, step: int
) -> None:
    """Agree across ranks on whether the save failed, so that every rank stops rather than one waiting
    forever for the others; the half-written ``.tmp`` folder is removed where possible."""
    import torch

    failed = torch.tensor(0.0 if error is None else 1.0, device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")
    if failed.item() == 0:
        return
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    previous = complete_checkpoints(root)
    if error is None:
        cause = "the write failed on another rank"
    elif isinstance(error, OSError):
        cause = f"{error.strerror or error} ({error.filename or partial})"
    else:
        cause = str(error).strip() or type(error).__name__
    raise TrainingError(
        f"the checkpoint at step {step} could not be written to {partial.parent}: {cause}. "
        + (
            f"The previous checkpoint {previous[-1]} is intact: free space or fix the directory, then rerun "
            "with --resume auto."
            if previous
            else "No earlier checkpoint exists."
        )
    )
