"""What keeps a run from corrupting its output folder, or outliving its launcher, and how it stops on a
signal without losing work. Import-light: nothing here imports torch until a process group exists.

- **One run per output folder.** Rank 0 takes an exclusive ``flock`` on ``OUTPUT_DIR/.lock`` before any
  checkpoint is looked up or file written, and holds it until the process ends; the file says who holds it
  (``{"pid", "host", "started"}``). A second run into the same folder is refused in one line naming the
  holder. A lock left by a dead process (file present, ``flock`` free) is taken over. The file is removed
  when the run ends, with the folders the lock created if they stayed empty (a refused run leaves nothing).
  ``flock`` locks an open file description: a child forked without ``exec`` would keep it (the fd is
  ``O_CLOEXEC``, so launched programs do not). On NFSv4 Linux maps ``flock`` to a POSIX lock that the
  server keeps; Lustre needs the ``flock`` mount option.
- **Training processes die with their launcher.** Under a launcher each process asks the kernel for SIGKILL
  when its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux), and exits at once if the parent is already
  gone: a killed ``accelerate launch`` leaves no rank training and writing checkpoints.
- **SIGTERM and SIGUSR1 stop the run at the next optimizer step**, with a checkpoint. The handler only sets
  a flag; after every optimizer step the ranks agree (an all-reduce MAX of one CPU integer over a gloo group,
  never a GPU sync) whether any of them got a signal, then every rank writes the checkpoint and the CLI exits
  with 128 + the signal (143 for SIGTERM, 138 for SIGUSR1). The rest of the step in flight and the
  checkpoint are the only work after the signal. The handlers last as long as the command: the CLI puts
  back the ones it found when the command ends (:func:`restore_signal_handlers`), so a script or notebook
  that calls ``mae_trainer.cli.main`` still ends on SIGTERM afterwards.

  The bound: torch's elastic agent (what ``accelerate launch`` runs in-process for DeepSpeed and multi-GPU
  configs; torch 2.14 ``torch/distributed/elastic/multiprocessing/api.py``, ``_close``) forwards SIGTERM,
  SIGINT, SIGHUP and SIGQUIT to the ranks, waits ``shutdown_timeout`` seconds (default **30**;
  ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` or ``PET_SHUTDOWN_TIMEOUT``) and then sends SIGKILL. So the step in
  flight plus the checkpoint must fit in 30 s, or the timeout must be raised; a checkpoint cut short by
  SIGKILL is never published (``checkpoint.py``), the previous one stays the resume point. The agent does
  not handle SIGUSR1 unless told to (``PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1``): by
  default a SIGUSR1 sent to the launcher kills it (and, through the parent-death signal, its ranks), so send
  SIGUSR1 to the ranks or set that variable (``examples/slurm_multinode.sbatch`` does).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ..errors import InputError, Preempted

LOCK_NAME = ".lock"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# ------------------------------------------------------------------------------------------ launcher


def launched() -> bool:
    """This process was started by a launcher: torchrun's variables, or the ``ACCELERATE_USE_*`` ones that
    ``accelerate launch`` always exports (also for a single process). Other ``ACCELERATE_*`` variables can
    sit in a user's shell, and a plain run must not die with its shell (``nohup``)."""
    return any(os.environ.get(k) for k in ("WORLD_SIZE", "LOCAL_RANK")) or any(
        k.startswith("ACCELERATE_USE_") for k in os.environ
    )


def die_with_launcher() -> None:
    """Under a launcher (:func:`launched`): SIGKILL this process when its parent dies, and die now if the
    parent is already gone. Linux only (elsewhere nothing happens)."""
    if not sys.platform.startswith("linux") or not launched():
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        return  # a kernel that refuses: keep running, as before
    if os.getppid() != parent or os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------ the lock

_held: dict[str, OutputLock] = {}


class OutputLock:
    """The exclusive lock on one output folder, held by this process (see :func:`lock_output_dir`)."""

    def __init__(self, folder: Path, fd: int, created: list[Path]):
        self.folder, self.fd, self.created = folder, fd, created
        self.path = folder / LOCK_NAME

    def release(self) -> None:
        """Remove the lock file, then unlock: a process that opened the old file meanwhile sees it gone
        and starts over. The folders the lock created go too while they are empty."""
        from ..publish import remove_empty_dirs

        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1
        remove_empty_dirs(self.created)


def _read_holder(fd: int) -> dict:
    """The holder's record; it may be being written right now, so a few tries."""
    for _ in range(20):
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            holder = json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict):
            return holder
        time.sleep(0.05)
    return {}


def _describe(holder: dict, held: bool) -> str:
    pid, host, started = holder.get("pid", "?"), holder.get("host", "?"), holder.get("started", "?")
    text = f"PID {pid} on {host} since {started}"
    if held and host == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            text += f"; PID {pid} is gone, but a process it started still holds the lock"
        except OSError:
            pass
    return text


def lock_output_dir(folder: Path) -> OutputLock:
    """Take the exclusive lock on ``folder`` (created if missing) for the rest of this process, or raise
    :class:`InputError` (message starting with ``folder``) naming the run that holds it. A lock file left by
    a process that died is taken over with one line saying so. Re-entrant within a process."""
    import fcntl

    from ..publish import check_output_dir, make_dirs

    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _held and _held[key].fd >= 0:
        return _held[key]
    if not folder.is_dir():  # a file, a parent that cannot be created: its own one-line refusal
        check_output_dir(folder)
    created = make_dirs(folder)
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            check_output_dir(folder)  # says why no file can be created here (read-only, permissions)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise InputError(
                f"{folder}: another run is writing into this folder ({_describe(holder, held=True)}; "
                f"lock {path}). Wait for it to end, or choose another folder"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    stale = _read_holder(fd) if os.fstat(fd).st_size else {}
    if stale:
        gone = _describe(stale, held=False)
        print(f"{path}: taking over the lock of a run that ended without releasing it ({gone})")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    lock = _held[key] = OutputLock(folder, fd, created)
    atexit.unregister(release_output_locks)  # once, however many locks come and go
    atexit.register(release_output_locks)
    return lock


def release_output_locks() -> None:
    """Release every output lock this process holds (the CLI, when a command ends; also at exit)."""
    while _held:
        _held.popitem()[1].release()


def claim_output_dir(folder: Path) -> None:
    """What every training command does first: die with the launcher (every rank), and on rank 0 (``RANK``
    unset or ``0``) lock ``folder`` for the run, before any checkpoint is looked up or file written."""
    die_with_launcher()
    if os.environ.get("RANK", "0") == "0":
        lock_output_dir(folder)


# ------------------------------------------------------------------------------------------ stopping


_replaced: dict[int, object] = {}  # signal → the handler StopSignals found there (the first time)


class StopSignals:
    """SIGTERM and SIGUSR1 set a flag; :meth:`requested`, called by every rank after every optimizer step,
    says whether any rank got one. Created on every rank once the process group exists
    (``make_accelerator``); the handlers it replaced come back with :func:`restore_signal_handlers`."""

    def __init__(self, num_processes: int):
        self.received = self.signum = 0
        if threading.current_thread() is threading.main_thread():  # where Python allows handlers
            for signum in STOP_SIGNALS:
                _replaced.setdefault(signum, signal.signal(signum, self._on_signal))
        self._flag = self._group = None
        if num_processes > 1:
            import torch
            import torch.distributed as dist

            # host-side agreement: gloo, never the GPU. On CPU ranks the world group is gloo already.
            if "gloo" not in str(dist.get_backend()):
                self._group = dist.new_group(backend="gloo")
            self._flag = torch.zeros(1, dtype=torch.int32)

    def _on_signal(self, signum, frame) -> None:
        self.received = self.received or signum

    def requested(self) -> bool:
        """Whether any rank received a stop signal, the same answer on every rank (``signum``: the signal,
        the largest number when ranks got different ones). One 4-byte all-reduce on the CPU with more than
        one process."""
        if self._flag is None:
            self.signum = self.received
        else:
            import torch.distributed as dist

            self._flag[0] = self.received
            dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group)
            self.signum = int(self._flag[0])
        return self.signum != 0

    def stop(self, engine, checkpoint: Path):
        """After the agreed stop's checkpoint: close the trackers and raise :class:`Preempted` (the CLI
        prints its one line and exits with 128 + the signal)."""
        engine.finish()
        raise Preempted(
            f"stopped by {signal.Signals(self.signum).name} at step {engine.step}: checkpoint {checkpoint} "
            "written; rerun with --resume auto",
            self.signum,
        )


def restore_signal_handlers() -> None:
    """Put back the SIGTERM and SIGUSR1 handlers :class:`StopSignals` replaced (the CLI, when a command
    ends). A handler Python did not install (``signal.getsignal`` gives None) stays as it is."""
    while _replaced:
        signum, handler = _replaced.popitem()
        if handler is not None:
            signal.signal(signum, handler)
