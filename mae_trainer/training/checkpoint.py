"""Checkpoints that survive crashes: ``accelerator.save_state`` into ``step_XXXXXXXX.tmp/``, renamed to
``step_XXXXXXXX/`` only once every rank has written and ``trainer_state.json`` (step, sampler position,
schedule, model config, and the manifest ``files``: every file of the folder with its size in bytes) is in
place, written last. A kill at any moment leaves the previous checkpoint intact; leftover ``.tmp`` folders
are ignored and cleaned up. The last ``keep_last`` complete checkpoints are kept.

A checkpoint is *complete* when every file its manifest names is there, readable and of the recorded size
(:func:`verify_checkpoint`). ``--resume auto`` takes the newest complete one and warns about each damaged
newer one, which stays where it is; a damaged checkpoint is never deleted by the rotation either.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError, TrainingError, is_lost_peer
from ..publish import publish_text

STATE_FILE = "trainer_state.json"
PREFIX = "step_"


def published_checkpoints(root: Path) -> list[Path]:
    """Every ``step_N`` folder under ``root`` (intact or not; ``.tmp`` folders excluded), oldest first."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete (intact: :func:`verify_checkpoint`) checkpoints under ``root``, oldest first."""
    return [p for p in published_checkpoints(root) if verify_checkpoint(p) is None]


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with the checkpoint at ``path``, in one line naming the file (relative to ``path``),
    or None when it is complete: ``trainer_state.json`` readable JSON, and every file of its manifest
    (``files``) there, readable and of the size recorded at save time. A checkpoint written before the
    manifest existed (no ``files``) is accepted when its RNG states (one per rank) and its model are
    there and not empty: nothing records the sizes it should have."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        return f"{STATE_FILE}: missing"
    except OSError as err:
        return f"{STATE_FILE}: unreadable ({err.strerror or err})"
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        return f"{STATE_FILE}: not JSON ({err})"
    if not isinstance(state, dict) or "step" not in state:
        return f"{STATE_FILE}: not a trainer state (no step)"
    files = state.get("files")
    if files is None:  # written before the manifest: existence only
        world = state.get("sampler", {}).get("world_size", 1)
        needed = [f"random_states_{rank}.pkl" for rank in range(world)]
        model = next(
            (n for n in ("pytorch_model", "model.safetensors", "pytorch_model.bin") if (path / n).exists()),
            None,
        )
        needed.append(model or "pytorch_model")
        for name in needed:
            problem = _file_problem(path / name, None)
            if problem:
                return f"{name}: {problem}"
        return None
    if not isinstance(files, dict):
        return f"{STATE_FILE}: its file list is not a mapping"
    for name, size in sorted(files.items()):
        problem = _file_problem(path / name, size)
        if problem:
            return f"{name}: {problem}"
    return None


def _file_problem(path: Path, size: int | None) -> str | None:
    """Why ``path`` is not a readable file (or folder, when ``size`` is None) of ``size`` bytes, or None."""
    try:
        if size is None and path.is_dir():
            return None if any(path.iterdir()) else "empty folder"
        with open(path, "rb"):
            pass
        actual = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if size is None:
        return "empty (0 bytes)" if actual == 0 else None
    if actual != size:
        return f"{actual} bytes, expected {size}"
    return None


def manifest(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative POSIX path → size in bytes), ``trainer_state.json`` excepted."""
    found = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            full = Path(dirpath) / name
            rel = full.relative_to(folder).as_posix()
            if rel != STATE_FILE:
                found[rel] = full.stat().st_size
    return dict(sorted(found.items()))


def resolve_resume(
    spec: str | None, root: Path, *, strict: bool = False, warn: Callable[[str], None] | None = None
) -> Path | None:
    """``--resume auto`` → newest complete checkpoint under ``root`` (None if there is no checkpoint yet);
    each damaged newer one is reported through ``warn`` (one line; default: stderr, main process only) and
    left in place. With ``strict`` a damaged newest checkpoint is refused instead (``InputError``), and so
    is a folder of damaged checkpoints only. ``--resume PATH`` → that checkpoint, which must be complete
    (``InputError`` naming the damaged file otherwise; no fallback)."""
    if spec is None:
        return None
    if spec != "auto":
        path = Path(spec)
        if not path.is_dir():
            raise InputError(f"{path}: not a complete checkpoint (no such folder)")
        problem = verify_checkpoint(path)
        if problem is not None:
            if problem == f"{STATE_FILE}: missing":
                raise InputError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
            raise InputError(f"{path}: checkpoint is damaged ({problem}); it is left as it is")
        return path
    warn = warn or _warn
    damaged: list[tuple[Path, str]] = []
    for path in reversed(published_checkpoints(root)):
        problem = verify_checkpoint(path)
        if problem is None:
            if damaged and strict:
                newest, why = damaged[0]
                raise InputError(
                    f"checkpoint {newest} is damaged ({why}); --strict-resume refuses to fall back to {path} "
                    f"(resume from it with --resume {path}, or drop --strict-resume)"
                )
            for bad, why in damaged:
                warn(f"warning: checkpoint {bad} is damaged ({why}); resuming from {path}")
            return path
        damaged.append((path, problem))
    if damaged:
        newest, why = damaged[0]
        raise InputError(
            f"checkpoint {newest} is damaged ({why})"
            + (f" and so are the {len(damaged) - 1} older one(s)" if len(damaged) > 1 else "")
            + f": no complete checkpoint to resume from under {root} (they are left as they are; move them "
            "away to start over)"
        )
    return None


def _warn(message: str) -> None:
    """One line on stderr from the main process (under a launcher every rank resolves the same folder)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


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
    error = write_error(lambda: accelerator.save_state(str(partial)))
    _raise_if_any_rank_failed(accelerator, error, root, partial, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            # the manifest of what every rank wrote, then the state file last: its presence with a
            # matching manifest is what makes the checkpoint complete
            state = {**state, "files": manifest(partial)}
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


def write_error(write: Callable[[], object]) -> Exception | None:
    """Run ``write()``; the exception of a failed write (disk full, read-only or vanished folder), or None.
    torch.save reports a failed write as a ``RuntimeError``, safetensors as a ``SafetensorError``; a
    collective that lost its peers is no write failure and goes on (the CLI reports the lost rank)."""
    from safetensors import SafetensorError

    try:
        write()
    except (OSError, RuntimeError, SafetensorError) as err:
        if is_lost_peer(err):
            raise
        return err
    return None


def any_rank_failed(accelerator, error: Exception | None) -> bool:
    """Whether the write failed on any rank, agreed by all (one collective), so that every rank stops
    rather than one waiting forever for the others."""
    import torch

    failed = torch.tensor(0.0 if error is None else 1.0, device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")
    return failed.item() != 0


def write_cause(error: Exception | None, where: Path) -> str:
    """Why a write into ``where`` failed, in one line (with the space left there when the error does not
    say it: torch reports a full disk as ``unexpected pos ...``)."""
    if error is None:
        return "the write failed on another rank"
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename or where})"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = lines[0] if lines else type(error).__name__
    if "space" not in cause:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(next(p for p in (where, *where.parents) if p.exists())).free
            cause += f" ({free / 2**20:.1f} MiB free on that file system)"
    return cause


def _raise_if_any_rank_failed(
    accelerator, error: Exception | None, root: Path, partial: Path, step: int
) -> None:
    """Stop every rank when the save failed on any; the half-written ``.tmp`` folder is removed where
    possible."""
    if not any_rank_failed(accelerator, error):
        return
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    previous = complete_checkpoints(root)
    raise TrainingError(
        f"the checkpoint at step {step} could not be written to {partial.parent}: "
        f"{write_cause(error, partial)}. "
        + (
            f"The previous checkpoint {previous[-1]} is intact: free space or fix the directory, then rerun "
            "with --resume auto."
            if previous
            else "No earlier checkpoint exists."
        )
    )


def raise_if_final_save_failed(accelerator, error: Exception | None, output_dir: Path) -> None:
    """Every rank: ``TrainingError`` when the final save (staging, consolidation or ``save_pretrained``)
    failed on any rank, naming the folder and the newest complete checkpoint, both left as they were."""
    if not any_rank_failed(accelerator, error):
        return
    found = complete_checkpoints(output_dir / "checkpoints")
    raise TrainingError(
        f"the final model could not be written to {output_dir}: {write_cause(error, output_dir)}. "
        + (
            f"The newest checkpoint {found[-1]} is intact: free space or fix the directory, then rerun with "
            "--resume auto."
            if found
            else "No checkpoint was written (rerun after freeing space or fixing the directory)."
        )
    )
