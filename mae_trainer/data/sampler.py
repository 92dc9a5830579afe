"""The FFCV traversal order of the training loader (``ShardedSampler``): which samples each epoch, in
which order, on which rank — the order only. The epoch's stage (crop size, batch size) is applied by the
training loader (:meth:`mae_trainer.data.train_loader.ProgressiveLoader.set_stage`) before FFCV asks for
the order.

The order does not depend on the layout (ranks × per-rank batch × accumulation), only on the global batch:

- an epoch is a permutation drawn from ``(seed, epoch)`` alone, cut to whole optimizer steps of the global
  batch ``G = ranks × batch × accumulation`` (at most ``G - 1`` samples are left out, different ones each
  epoch);
- the permutation is read as consecutive *micro-batches* of ``batch`` samples; micro-batch ``g`` goes to
  rank ``g % ranks`` as its local batch ``g // ranks``;
- so optimizer step ``s`` of an epoch trains on permutation positions ``[s·G, (s+1)·G)`` however the ranks
  share them: 2 ranks × accumulation 1 and 1 rank × accumulation 2 train on the same samples per step, and
  with the same per-rank batch on the same micro-batches (crops and masks are seeded per micro-batch).

Resume: after :meth:`ShardedSampler.resume_at` the epoch restarts exactly at the given local batch, without
decoding the skipped ones.
"""

from __future__ import annotations

import numpy as np
import torch
from ffcv.traversal_order.base import TraversalOrder

from .resolution import whole_batches


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedSampler(TraversalOrder):
    """FFCV ``TraversalOrder``: this rank's micro-batches of each epoch, from the resume point if any.

    FFCV instantiates an order by calling it with the loader, so an instance is passed as ``order=`` and
    ``__call__`` binds it. FFCV asks :meth:`sample_order` when an epoch's iteration starts (and once when
    the loader is built); the order is cut to the loader's ``batch_size`` at that moment, which the
    sampler reads but never sets. ``accumulation`` is the number of micro-steps per optimizer step (an
    epoch holds whole optimizer steps).
    """

    def __init__(
        self, seed: int = 0, rank: int | None = None, world_size: int | None = None, accumulation: int = 1
    ):
        # TraversalOrder.__init__ needs the loader; FFCV hands it over in __call__.
        self.seed = seed
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.accumulation = accumulation
        self.loader = None
        self.distributed = self.world_size > 1
        self.sampler = None
        self.resume_epoch, self.resume_batch = -1, 0

    def __call__(self, loader) -> ShardedSampler:
        self.loader = loader
        return self.bind(loader.indices)

    def bind(self, indices) -> ShardedSampler:
        """Order ``indices`` (the samples an epoch draws from); FFCV's loader binds its own."""
        self.indices = np.asarray(indices)
        return self

    def state(self, epoch: int, consumed: int, batch_size: int) -> dict:
        """The position after ``consumed`` local batches of ``batch_size`` in ``epoch``, layout-free: the
        epoch and the samples of it consumed by all ranks together (a finished epoch is the start of the
        next)."""
        if consumed == self.batches(batch_size):
            epoch, consumed = epoch + 1, 0
        return {"epoch": epoch, "samples": consumed * batch_size * self.world_size}

    def load_state(self, state: dict, batch_size: int) -> int:
        """Continue at ``state``'s position (:meth:`state`, saved on any layout of the same global batch);
        returns the local batch the epoch restarts at."""
        epoch, samples = state["epoch"], state["samples"]
        per_round = batch_size * self.world_size
        if samples % per_round:
            raise ValueError(
                f"cannot resume at sample {samples} of epoch {epoch} with {self.world_size} rank(s) "
                f"× {batch_size} images: not a whole number of micro-batches"
            )
        self.resume_at(epoch, samples // per_round)
        return samples // per_round

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order of all samples (positions into the loader's indices), the same for every
        layout: a function of (seed, epoch) only."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def shard(self, epoch: int, batch_size: int) -> np.ndarray:
        """This rank's samples for ``epoch`` in micro-batches of ``batch_size``, in order (whole batches)."""
        batches = self.batches(batch_size)
        used = self.permutation(epoch)[: batches * batch_size * self.world_size]
        mine = used.reshape(batches, self.world_size, batch_size)[:, self.rank]
        return self.indices[mine.reshape(-1)]

    def batches(self, batch_size: int) -> int:
        """Local batches of ``batch_size`` in one epoch on each rank (whole optimizer steps)."""
        return whole_batches(self.num_samples, self.world_size, batch_size, self.accumulation)

    def micro_batch(self, local_batch: int) -> int:
        """The epoch-wide index of this rank's local batch ``local_batch`` (layout-free, see above)."""
        return local_batch * self.world_size + self.rank

    def resume_at(self, epoch: int, batch: int) -> None:
        """Start ``epoch`` at local batch ``batch`` (the batches before it were consumed before a
        checkpoint); ``epoch = -1``: every epoch from its beginning."""
        self.resume_epoch, self.resume_batch = epoch, batch

    def start_batch(self, epoch: int) -> int:
        return self.resume_batch if epoch == self.resume_epoch else 0

    def sample_order(self, epoch: int) -> np.ndarray:
        batch_size = self.loader.batch_size
        start = self.start_batch(epoch)
        order = self.shard(epoch, batch_size)[start * batch_size :]
        # FFCV trims each epoch to len(loader) batches, computed from this attribute after this call: keep
        # it current so an epoch with another batch size or a resume point is not cut short.
        self.loader.first_traversal_order = order
        return order
