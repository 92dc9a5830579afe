"""How long ranks wait for each other: once at start-up (the rendezvous), then at every collective.

``--dist-timeout`` bounds the collectives of a running job, so that a dead or hung node ends the run within
that bound. It must not bound the rendezvous: there every rank waits for the slowest one to start (a loaded
node can spend a minute importing torch, DeepSpeed and FFCV), and a short ``--dist-timeout`` would fail the
run before it began. So the process group is created with :func:`rendezvous_timeout` (torch's
``init_process_group`` uses it for the TCPStore connection and, with gloo, for the full-mesh connection that
waits for every rank), and :func:`end_rendezvous`, once every rank is there, puts ``--dist-timeout`` on the
world group and on its store. Groups created later (DeepSpeed's clone of the world group for ZeRO) take
torch's module default, which :func:`~mae_trainer.training.accelerator.make_accelerator` sets to
``--dist-timeout``.
"""

from __future__ import annotations

from datetime import timedelta

# torchrun's own static rendezvous (the launchers of the nodes meeting) waits 10 minutes by default: the
# ranks they start then get as long to meet in turn.
RENDEZVOUS_S = 600.0


def rendezvous_timeout(dist_timeout: timedelta) -> timedelta:
    """How long a rank waits at start-up for all others: 10 minutes, or ``dist_timeout`` if longer."""
    return max(dist_timeout, timedelta(seconds=RENDEZVOUS_S))


def end_rendezvous(dist_timeout: timedelta, rendezvous: timedelta) -> None:
    """Wait (up to ``rendezvous``) until every rank has joined, then bound every later operation of the
    world group and of its store by ``dist_timeout``. No-op without a process group.

    The barrier is where the ranks meet when the backend connects lazily (NCCL creates its communicators at
    the first collective, so ``init_process_group`` returns without waiting); with gloo they have already met
    inside ``init_process_group`` and it returns at once."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    if not dist.is_initialized():
        return
    dist.barrier(timeout=rendezvous)
    dist.set_timeout(dist_timeout)  # gloo and NCCL honour it for every later collective
    # The store outlives the rendezvous: NCCL communicators of later groups exchange their ids through it.
    c10d._get_default_store().set_timeout(dist_timeout)
