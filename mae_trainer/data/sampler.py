"""The custom FFCV traversal order that drives progressive resolution (``ProgressiveSampler``), and the
loader around it (``ProgressiveLoader``) whose batches carry their epoch's resolution and mask ratio.

Order: a permutation drawn from ``(seed, epoch)`` alone — not from the worker count or the rank — cut into
``world_size`` disjoint strided shards. Each rank gets ``N // world_size`` samples and drops its last
partial batch (``drop_last``): at most ``world_size - 1`` samples plus one partial batch per rank are left
out of an epoch, different ones each epoch. Resume: ``state_dict`` records (epoch, batches consumed); after
``load_state_dict`` the epoch restarts exactly at the next batch, without decoding the skipped ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ffcv.traversal_order.base import TraversalOrder

from .schedules import ResolutionSchedule, Stage


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ProgressiveSampler(TraversalOrder):
    """FFCV ``TraversalOrder`` owning the resolution schedule.

    FFCV instantiates an order by calling it with the loader, so an instance is passed as ``order=`` and
    ``__call__`` binds it. Before each epoch FFCV asks :meth:`sample_order`, which also sets the epoch's
    batch size and crop size on the loader (no pipeline recompilation).
    """

    def __init__(
        self,
        schedule: ResolutionSchedule,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        # TraversalOrder.__init__ needs the loader; FFCV hands it over in __call__.
        self.schedule = schedule
        self.seed = seed
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.loader = None
        self.distributed = self.world_size > 1
        self.sampler = None
        self.resume_epoch, self.resume_batch = -1, 0

    def __call__(self, loader) -> ProgressiveSampler:
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

    def batches_in_epoch(self, epoch: int) -> int:
        return (self.num_samples // self.world_size) // self.schedule.stage(epoch).batch_size

    def start_batch(self, epoch: int) -> int:
        return self.resume_batch if epoch == self.resume_epoch else 0

    def apply_stage(self, stage: Stage) -> None:
        self.loader.batch_size = stage.batch_size
        self.loader.pipeline_specs["image"].decoder.output_size = (stage.resolution, stage.resolution)

    def sample_order(self, epoch: int) -> np.ndarray:
        stage = self.schedule.stage(epoch)
        self.apply_stage(stage)
        batches = self.batches_in_epoch(epoch)
        order = self.shard(epoch)[: batches * stage.batch_size][self.start_batch(epoch) * stage.batch_size :]
        # FFCV trims each epoch to len(loader) batches, computed from this attribute: keep it current so a
        # stage with another batch size is not cut short.
        self.loader.first_traversal_order = order
        return order


@dataclass
class Batch:
    """One batch and the stage it belongs to. ``images`` are uint8 ``(B, 3, R, R)``."""

    images: torch.Tensor
    labels: torch.Tensor
    resolution: int
    mask_ratio: float
    epoch: int
    index: int  # batch index within the epoch


class ProgressiveLoader:
    """FFCV loader over a ``.beton`` driven by a :class:`ProgressiveSampler`.

    RandomResizedCrop (MAE's scale 0.2–1, ratio 3/4–4/3) and horizontal flip, drawn reproducibly from
    ``seed`` (:mod:`mae_trainer.data.augment`), uint8 output; normalisation happens on the device in the
    training step. ``crop_decode`` decodes only the crop of JPEG samples (same crops, seeded the same way).
    ``interpolation`` resizes the crops: ``"bicubic"`` (reference MAE's PIL bicubic) or ``"area"``.
    ``decoder`` replaces the crop decoder (e.g. crop decode); it must honour a changed
    ``output_size`` between epochs.
    """

    def __init__(
        self,
        path: Path,
        schedule: ResolutionSchedule,
        *,
        num_workers: int = 2,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        os_cache: bool = True,
        batches_ahead: int = 2,
        decoder=None,
        crop_decode: bool = False,
        interpolation: str = "bicubic",
    ):
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

        from .augment import RRC_RATIO, RRC_SCALE, SeededRandomResizedCrop

        self.schedule = schedule
        self.sampler = ProgressiveSampler(schedule, seed=seed, rank=rank, world_size=world_size)
        first = schedule.stage(0)
        if decoder is None:
            decoder = SeededRandomResizedCrop(
                (first.resolution,) * 2, scale=RRC_SCALE, ratio=RRC_RATIO, seed=seed, crop_decode=crop_decode,
                interpolation=interpolation,
            )  # fmt: skip
        image_pipeline = [decoder]
        if not getattr(decoder, "includes_flip", False):
            image_pipeline.append(RandomHorizontalFlip())
        pipelines = {
            "image": [*image_pipeline, ToTensor(), ToTorchImage(channels_last=False)],
            "label": [IntDecoder(), ToTensor(), Squeeze(1)],
        }
        self.loader = Loader(
            str(path),
            batch_size=first.batch_size,
            num_workers=num_workers,
            order=self.sampler,
            os_cache=os_cache,
            batches_ahead=batches_ahead,
            drop_last=True,
            pipelines=pipelines,
        )
        self.position = (0, 0)  # (epoch, batches consumed in it)

    def batches_in_epoch(self, epoch: int) -> int:
        return self.sampler.batches_in_epoch(epoch)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch`` (from the resume point when one was loaded for it)."""
        stage = self.schedule.stage(epoch)
        start = self.sampler.start_batch(epoch)
        self.loader.next_epoch = epoch
        self.position = (epoch, start)
        for index, (images, labels) in enumerate(self.loader, start=start):
            self.position = (epoch, index + 1)
            yield Batch(images, labels, stage.resolution, stage.mask_ratio, epoch, index)
        self.sampler.resume_epoch = -1

    def state_dict(self) -> dict:
        epoch, batch = self.position
        return {
            "epoch": epoch,
            "batch": batch,
            "seed": self.sampler.seed,
            "world_size": self.sampler.world_size,
            "schedule": self.schedule.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.sampler.world_size or state["seed"] != self.sampler.seed:
            raise ValueError(
                f"cannot resume a sampler saved with seed {state['seed']} on {state['world_size']} "
                f"rank(s) with seed {self.sampler.seed} on {self.sampler.world_size}"
            )
        self.sampler.resume_epoch, self.sampler.resume_batch = state["epoch"], state["batch"]
        self.position = (state["epoch"], state["batch"])
