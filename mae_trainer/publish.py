"""Outputs appear under their final name only once complete.

A file is written beside its target under a hidden name (``.NAME.partial-PID``) and renamed onto it with
``os.replace``, atomic within one file system: a reader, a crash or a rerun sees the old file or the new
one, never half of one. A failure removes what was half written, and the folders created for it, and
leaves the target as it was. A ``save_pretrained`` folder is written into a hidden folder and its files
are moved in one by one, the weights last: a ``model.safetensors`` (or its index) in place means a complete
save.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InputError

# A save_pretrained folder holds a complete model once one of these is in it: they are moved in last.
ENTRY_FILES = ("model.safetensors", "model.safetensors.index.json")


def partial_path(target: Path) -> Path:
    """The hidden sibling that a write of ``target`` goes to (one per process)."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine; a process of another user counts as alive)."""
    if pid <= 0:
        return True  # not a PID we can judge: leave its file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(target: Path, *, suffixes: tuple[str, ...] = ("",)) -> list[Path]:
    """Remove the hidden partial files (``.NAME.partial-PID``, and anything named after one, such as
    ``.NAME.partial-PID.failed``) that a killed writer of ``target`` left beside it: only those whose PID is
    no live process, never a live writer's (nor this process's). ``suffixes`` adds sibling targets
    (``".json"``: ``NAME.json``'s partials too). Returns the paths removed."""
    target = Path(target)
    names = [re.escape(f".{target.name}{suffix}.partial-") for suffix in suffixes]
    pattern = re.compile(rf"^(?:{'|'.join(names)})(\d+)(?:\..*)?$")
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        remove(Path(entry.path))
        removed.append(Path(entry.path))
    return removed


def remove(path: Path) -> None:
    """Remove a file, link or folder tree if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created, outermost first."""
    folder = Path(folder)
    missing = []
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            break
        missing.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_empty_dirs(created: list[Path]) -> None:
    """Undo :func:`make_dirs`: remove the folders it created, innermost first, while they are empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def publishing(target: Path) -> Iterator[Path]:
    """``with publishing(target) as partial: write(partial)``: on success ``partial`` replaces ``target``
    (its missing parent folders are created); on any exception ``partial`` and the folders created for it
    are removed, ``target`` is untouched, and the exception goes on."""
    target = Path(target)
    created = make_dirs(target.parent)
    partial = partial_path(target)
    remove(partial)
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        remove(partial)
        remove_empty_dirs(created)
        raise


def publish_text(target: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` through :func:`publishing`; returns ``target``."""
    with publishing(target) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(target)


def _weights_last(name: str) -> tuple[bool, bool, str]:
    return name in ENTRY_FILES, name.endswith(".safetensors"), name


def publish_folder(folder: Path, write: Callable[[Path], object]) -> list[str]:
    """``write(staging)`` (e.g. ``model.save_pretrained``) into a hidden folder inside ``folder`` (created
    with its missing parents), then move its files into ``folder``, replacing files of the same names:
    config and other files first, weight shards next, ``model.safetensors`` (or the index) last. The
    weights entry files already in ``folder`` are removed before the move, so that a model file present
    always belongs to a complete save, and an earlier save's ``model.safetensors`` cannot pass for a new
    sharded one. Every other file in ``folder`` stays. If ``write`` fails, ``folder`` is left as it was (the
    staging folder and the folders created are removed). Returns the names moved in, in order."""
    folder = Path(folder)
    created = make_dirs(folder)
    staging = folder / f".save.partial-{os.getpid()}"
    remove(staging)
    try:
        write(staging)
        names = sorted((p.name for p in staging.iterdir()), key=_weights_last)
    except BaseException:
        remove(staging)
        remove_empty_dirs(created)
        raise
    try:
        for name in ENTRY_FILES:
            if os.path.isfile(folder / name):
                os.unlink(folder / name)
        for name in names:
            os.replace(staging / name, folder / name)
    finally:
        remove(staging)
    return names


def _reason(path: Path, err: OSError) -> str:
    """Why ``path`` cannot be created or written, naming a parent that is a file."""
    blocker = next((p for p in path.parents if os.path.isfile(p)), None)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    return err.strerror or str(err)


def check_output_dir(path: Path) -> None:
    """Refuse an output folder that cannot be used, before any work: ``InputError`` starting with ``path``
    when it is a file, when it or a missing parent cannot be created (a parent is a file, a name too long,
    a read-only file system) or when no file can be created in it. Probes by creating the missing folders
    and a file in it, then removes all it created: nothing is left behind either way."""
    path = Path(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise InputError(f"{path}: exists and is not a folder")
    try:
        created = make_dirs(path)
    except OSError as err:
        raise InputError(f"{path}: cannot create the folder ({_reason(path, err)})") from None
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"{path}: cannot write in the folder ({_reason(path, err)})") from None
    finally:
        remove_empty_dirs(created)
