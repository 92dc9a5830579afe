"""Errors that the CLI reports as one line naming the flag or file, with a non-zero exit."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input met by the library (``data/``, ``modeling/``, ``training/``, ``downstream/``): a file that
    is not what it should be, a value out of range. The message starts with the offending value or file
    and never names a flag: the CLI prefixes the flag the value came from (``--data x.beton: ...``).

    ``argument``, when given, names the parameter of the library call that the value came from
    (``"output"``, ``"endpoint"``): a caller that passed several inputs maps it to its own flag."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


class UsageError(Exception):
    """Bad input on the command line (raised by the CLI only): one line naming the flag, exit status 2."""


class TrainingError(Exception):
    """A run that had to stop (non-finite loss, a checkpoint that could not be written). The message says
    what happened, at which step, and which checkpoint to resume from; nothing already saved is touched."""


_LOST_PEER_MARKERS = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Timed out waiting",
    "gloo/transport",
    "NCCL",
    "Watchdog",
)


def is_lost_peer(err: BaseException) -> bool:
    """A collective that failed because another rank died, hung or left the network (gloo/NCCL report
    these as ``RuntimeError``/``DistBackendError``) — only meaningful while a process group exists."""
    import torch.distributed as dist

    return (
        isinstance(err, RuntimeError)
        and dist.is_available()
        and dist.is_initialized()
        and any(marker in str(err) for marker in _LOST_PEER_MARKERS)
    )


class Preempted(TrainingError):
    """SIGTERM or SIGUSR1 stopped the run at an optimizer-step boundary, after every rank wrote the
    checkpoint the message names (``training/lifecycle.py``). ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
