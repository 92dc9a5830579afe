"""Supervision of FFCV's writer (:class:`WorkerWatch`): every failure of a write ends. FFCV's
``DatasetWriter`` waits forever for a worker that died, and a signal raised at the wrong moment can leave a
lock held; here a thread watches the workers and interrupts the writing thread, signals are deferred out of
the places where raising would hang the exit, and the workers are ended on any error."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path

from ..errors import TrainingError


class WriteInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a write (the partial file is removed); ``exit_status`` is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__()
        self.exit_status = 128 + signum


class WorkerFailed(Exception):
    pass


class WorkerWatch:
    """FFCV's ``DatasetWriter`` waits for its worker processes in a loop that never ends when one of them
    dies. While a write runs, a thread watches the workers (their exit codes, and the file in which
    :meth:`ImageSource.__getitem__` reports a failure) and interrupts the writing thread with SIGUSR1 when
    one fails; SIGINT and SIGTERM raise :class:`WriteInterrupted`. Either way the workers are ended and the
    exception propagates, so the caller removes the partial file. Only in the main thread (signals); a write
    from another thread runs unwatched.

    Every wait ends: the exception is raised wherever the writing thread blocks (also in FFCV's wait for
    the workers' allocations, where a worker that hit a full disk at its last page once left the write
    hanging after its progress bar was full), except while a worker is being forked (then the next signal
    of the watcher raises it); workers that outlive SIGTERM are killed; FFCV's work queue is told not to
    hold the exit (its feeder thread would wait forever to hand chunks to dead workers)."""

    def __init__(self, source, output: Path, partial: Path):
        self.source, self.output = source, output
        self.failure_file = partial.with_name(partial.name + ".failed")
        self.active = threading.current_thread() is threading.main_thread()
        self.stop = threading.Event()
        self.signalled: int | None = None
        self.workers: dict[int, multiprocessing.Process] = {}
        self.queues: list = []  # the multiprocessing queues FFCV's writer makes for this write
        # where a worker that fails outside __getitem__ (e.g. writing its last page to a full disk) says why:
        # shared memory made before the workers fork, as the disk may have no room for a file
        self.report = multiprocessing.RawArray("c", 2048)

    def __enter__(self) -> WorkerWatch:
        import ffcv.writer

        self.source._failure_file, self.source._writer_pid = self.failure_file, os.getpid()
        self.before = set(multiprocessing.active_children())  # not this write's workers
        self.ffcv_queue = ffcv.writer.Queue

        def recorded_queue(*args, **kwargs):
            queue = self.ffcv_queue(*args, **kwargs)
            self.queues.append(queue)
            return queue

        ffcv.writer.Queue = recorded_queue
        self.ffcv_jobs = {name: getattr(ffcv.writer, name) for name in _WORKER_JOBS}
        for name, job in self.ffcv_jobs.items():
            setattr(ffcv.writer, name, self._reporting(job))
        if not self.active:
            return self
        owner = os.getpid()

        def on_signal(signum, frame):
            if os.getpid() != owner:  # a forked worker inherits this handler: just end it
                os._exit(128 + signum)
            if signum != signal.SIGUSR1:
                self.signalled = signum
            if self.stop.is_set() or _must_defer_signal(frame):
                # Raised while FFCV starts a worker, the exception would be swallowed by an at-fork
                # callback or leave a worker unknown to us (it would recreate the partial file); raised
                # in a queue's put, it could leave the queue's lock held: the watcher thread signals
                # again once out of these. Once stopping, __exit__ decides.
                return
            if self.signalled is not None:
                raise WriteInterrupted(self.signalled)
            if not self.stop.is_set() and self._failure() is not None:
                raise WorkerFailed()

        self.saved = {
            signum: signal.signal(signum, on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
        }
        self.thread = threading.Thread(target=self._watch, name="ffcv-writer-watch", daemon=True)
        self.thread.start()
        return self

    def _reporting(self, job):
        """``job`` (an FFCV worker's function) that, should it raise, puts the reason in :attr:`report` and
        ends its process (status 1) without a traceback."""
        report = self.report

        def run(*args):
            try:
                job(*args)
            except BaseException as err:
                message = f"{type(err).__name__}: {err}".encode(errors="replace")[: len(report) - 1]
                report[: len(message)] = message
                os._exit(1)

        return run

    def _failure(self) -> str | None:
        if self.failure_file.exists():
            return self.failure_file.read_text()
        if self.report.value:
            return f"a writer worker process failed: {self.report.value.decode(errors='replace')}"
        for worker in self.workers.values():
            code = worker.exitcode
            if code not in (None, 0):
                return f"a writer worker process exited with status {code} (see its output above)"
        return None

    def _watch(self) -> None:
        main = threading.main_thread().ident
        while not self.stop.wait(0.1):
            for worker in multiprocessing.active_children():  # keep each: exit codes are read later
                if worker not in self.before:
                    self.workers.setdefault(worker.pid, worker)
            if self.signalled is not None or self._failure() is not None:
                signal.pthread_kill(main, signal.SIGUSR1)  # repeated until the main thread can raise

    def finished(self) -> None:
        """Called when FFCV's writer returns: a signal or failure it may have swallowed still counts."""
        self.stop.set()
        if self.signalled is not None:
            raise WriteInterrupted(self.signalled)
        if self._failure() is not None:
            raise WorkerFailed()

    def __exit__(self, kind, error, trace) -> None:
        import ffcv.writer

        self.stop.set()
        ffcv.writer.Queue = self.ffcv_queue
        for name, job in self.ffcv_jobs.items():
            setattr(ffcv.writer, name, job)
        try:
            if self.active:
                self.thread.join()
                for signum, handler in self.saved.items():
                    signal.signal(signum, handler)
            if error is not None:
                for queue in self.queues:  # chunks no worker will read must not hold the exit
                    queue.cancel_join_thread()
                workers = [*self.workers.values(), *set(multiprocessing.active_children()) - self.before]
                for worker in workers:
                    if worker.is_alive():
                        worker.terminate()
                for worker in workers:
                    worker.join(10)
                    if worker.is_alive():  # SIGTERM is not enough (e.g. stuck on a dead file system)
                        worker.kill()
                        worker.join(10)
                _close_progress_bars()  # before the error line, not after it at exit
            failure = self._failure() if isinstance(error, WorkerFailed) else None
        finally:
            self.failure_file.unlink(missing_ok=True)
            self.source._failure_file = None
        if failure is not None:
            raise TrainingError(f"writing {self.output} failed: {failure}; nothing was written") from None
        if error is None and self.signalled is not None:  # arrived after finished()
            raise WriteInterrupted(self.signalled)


_WORKER_JOBS = ("worker_job_indexed_dataset", "worker_job_webdataset")  # ffcv.writer's worker functions


def _close_progress_bars() -> None:
    """Close FFCV's progress bar of a failed write (its frame, kept by the traceback, would print it at
    exit)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


# Where multiprocessing starts a process (and runs its at-fork callbacks), and where a queue's put() holds
# its buffer's lock or starts its feeder thread (an exception raised there can leave that lock held, and
# the exit then waits on it forever: FFCV puts every chunk before it starts its workers, so a signal right
# at the start of a write lands there); waiting on a queue (get), a lock or a connection is not in these,
# so an exception raised there ends the wait.
_FORK_FILES = {"popen_fork.py", "popen_forkserver.py", "popen_spawn_posix.py", "resource_tracker.py"}
_FORK_FUNCTIONS = {
    ("process.py", "start"),
    ("process.py", "_bootstrap"),
    ("util.py", "_run_after_forkers"),
    ("util.py", "spawnv_passfds"),  # the resource tracker's start (FFCV's first shared-memory block)
    ("queues.py", "put"),  # a queue's put holds its buffer's lock: raised there, the exit waits on it forever
    ("queues.py", "_start_thread"),
}


def _must_defer_signal(frame) -> bool:
    """Whether ``frame`` runs inside multiprocessing's start of a process or a queue's put, or inside tqdm
    (raised in the progress bar's close, after it drew the bar and before its newline, the error line
    would follow the bar on the same line: a closed bar does not close again)."""
    while frame is not None:
        code = frame.f_code
        if f"{os.sep}tqdm{os.sep}" in code.co_filename:
            return True
        if "multiprocessing" in code.co_filename:
            name = os.path.basename(code.co_filename)
            if name in _FORK_FILES or (name, code.co_name) in _FORK_FUNCTIONS:
                return True
        frame = frame.f_back
    return False


def release_shared_memory(writer) -> None:
    """FFCV's writer frees its shared-memory metadata block only on success."""
    from multiprocessing import shared_memory

    memory = getattr(writer, "metadata_sm", None)
    if not isinstance(memory, shared_memory.SharedMemory):  # FFCV sets a placeholder int before creating it
        return
    try:
        memory.close()
        memory.unlink()
    except (FileNotFoundError, BufferError):
        pass
