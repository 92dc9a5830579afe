"""The FFCV traversal order of the training loader (``ShardedSampler``): which samples each epoch, in
which order, on which rank — the order only. The epoch's stage (crop size, batch size) is applied by the
training loader (:meth:`mae_trainer.data.train_loader.ProgressiveLoader.set_stage`) before FFCV asks for
the order.

Order: a permutation drawn from ``(seed, epoch)`` alone — not from the worker count or the rank — cut into
``world_size`` disjoint strided shards. Each rank gets ``N // world_size`` samples and drops its last
partial batch (``drop_last``): at most ``world_size - 1`` samples plus one partial batch per rank are left
out of an epoch, different ones each epoch. Resume: after :meth:`ShardedSampler.resume_at` the epoch
restarts exactly at the given batch, without decoding the skipped ones.
"""

from __future__ import annotations

import numpy as np
import torch
from ffcv.traversal_order.base import TraversalOrder

from .schedules import whole_batches


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedSampler(TraversalOrder):
    """FFCV ``TraversalOrder``: this rank's seeded shard of each epoch, from the resume point if any.

    FFCV instantiates an order by calling it with the loader, so an instance is passed as ``order=`` and
    ``__call__`` binds it. FFCV asks :meth:`sample_order` when an epoch's iteration starts (and once when
    the loader is built); the order is cut to whole batches of the loader's ``batch_size`` at that moment,
    which the sampler reads but never sets.
    """

    def __init__(self, seed: int = 0, rank: int | None = None, world_size: int | None = None):
        # TraversalOrder.__init__ needs the loader; FFCV hands it over in __call__.
        self.seed = seed
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.loader = None
        self.distributed = self.world_size > 1
        self.sampler = None
        self.resume_epoch, self.resume_batch = -1, 0

    def __call__(self, loader) -> ShardedSampler:
        self.loader = loader
        self.indices = np.asarray(loader.indices)
        return self

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's samples for ``epoch`` (before batching), a function of (seed, epoch, rank, world)."""
        permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        per_rank = self.num_samples // self.world_size
        return self.indices[permutation[: per_rank * self.world_size][self.rank :: self.world_size]]

    def batches(self, batch_size: int) -> int:
        """Whole batches of ``batch_size`` in one epoch of this rank's shard."""
        return whole_batches(self.num_samples, self.world_size, batch_size)

    def resume_at(self, epoch: int, batch: int) -> None:
        """Start ``epoch`` at batch ``batch`` (the batches before it were consumed before a checkpoint);
        ``epoch = -1``: every epoch from its beginning."""
        self.resume_epoch, self.resume_batch = epoch, batch

    def start_batch(self, epoch: int) -> int:
        return self.resume_batch if epoch == self.resume_epoch else 0

    def sample_order(self, epoch: int) -> np.ndarray:
        batch_size = self.loader.batch_size
        start = self.start_batch(epoch)
        order = self.shard(epoch)[: self.batches(batch_size) * batch_size][start * batch_size :]
        # FFCV trims each epoch to len(loader) batches, computed from this attribute after this call: keep
        # it current so an epoch with another batch size or a resume point is not cut short.
        self.loader.first_traversal_order = order
        return order
