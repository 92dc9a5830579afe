"""The batches ``finetune`` trains and evaluates on, from either decode path, in one shape: normalised float
images and labels on the training device, in the layout-free order of pre-training
(:class:`~mae_trainer.data.sampler.ShardedSampler`: an epoch is the ``(seed, epoch)`` permutation cut to whole
optimizer steps, micro-batch ``g`` on rank ``g % ranks``), resumable mid-epoch from a layout-free position.

- :class:`FFCVTrainData` (``--loader ffcv``, the default for a ``.beton``): pre-training's crop-decode
  loader (per-sample seeded RandomResizedCrop at timm's scale 0.08–1 and flip, bicubic), then the recipe's
  augmentations on the batch of tensors (:class:`~mae_trainer.data.batch_augment.BatchAugment`, on the GPU
  when there is one);
- :class:`PILTrainData` (folders, ``datasets`` saves): PIL images through timm/torchvision transforms in
  ``DataLoader`` workers, each sample's transform seeded by ``(seed, epoch, sample)``.

Every random draw is keyed (crops per sample, batch augmentations and mixup per micro-batch), so a resumed
run continues the same stream, and the same per-rank batch gives the same micro-batches on any layout.

Evaluation (:func:`eval_batches`): each rank reads its own contiguous share of the held-out split
(``data.eval_loader.eval_shard``), every image exactly once over the ranks, centre-cropped (0.875).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..data.batch_augment import augment_seed
from ..data.labelled import BetonSource, LabelledImages, eval_transform
from ..data.sampler import ShardedSampler

RRC_SCALE_FINETUNE = (0.08, 1.0)  # timm's RandomResizedCrop scale, the MAE fine-tune's
EVAL_CROP_RATIO = 0.875


@dataclass
class TrainBatch:
    images: torch.Tensor  # float (B, 3, R, R), normalised, on the training device
    labels: torch.Tensor  # int64 (B,), same device
    epoch: int
    index: int  # this rank's local batch index in the epoch
    seed: int  # keys this micro-batch's random draws (augmentation, mixup): layout-free


@contextlib.contextmanager
def seeded(*key: int):
    """Python's, numpy's and torch's (CPU) global generators seeded by ``key`` inside the block, and put
    back as they were after it: for library code that only draws from the global streams (timm's
    RandAugment and Mixup)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    words = np.random.SeedSequence(list(key)).generate_state(4, np.uint32)
    random.seed(int(words[0]))
    np.random.seed(int(words[1]))
    torch.manual_seed(int(words[2]) << 32 | int(words[3]))
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


@contextlib.contextmanager
def keyed_rng(seed: int, device):
    """torch's global generators (the CPU's and ``device``'s) seeded by ``seed`` inside the block and put
    back after it: stochastic depth in a forward draws the same masks for a micro-batch on any layout."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def mix(mixup, images: torch.Tensor, labels: torch.Tensor, seed: int):
    """timm's ``Mixup`` (mixup/cutmix pairs within the micro-batch, label smoothing) with its draws keyed by
    ``seed``."""
    with seeded(seed):
        return mixup(images, labels)


class PILTrainData:
    """``source``'s training samples ``positions`` (positions in its order) as PIL images through
    ``transform`` in ``num_workers`` ``DataLoader`` processes."""

    def __init__(self, source, positions, transform, *, batch_size, seed, accumulation, num_workers, device):
        self.images = SeededImages(source, positions, transform, seed)
        self.sampler = ShardedSampler(seed=seed, accumulation=accumulation).bind(np.arange(len(positions)))
        self.batch_size, self.seed = batch_size, seed
        self.num_workers, self.device = num_workers, torch.device(device)
        self.position = (0, 0)  # (epoch, local batches consumed in it)

    def epoch(self, epoch: int) -> Iterator[TrainBatch]:
        start = self.sampler.start_batch(epoch)
        order = self.sampler.shard(epoch, self.batch_size).tolist()
        b = self.batch_size
        keys = [[(epoch, i) for i in order[k * b : (k + 1) * b]] for k in range(start, len(order) // b)]
        loader = torch.utils.data.DataLoader(
            self.images,
            batch_sampler=keys,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.position = (epoch, start)
        for index, (images, labels) in enumerate(loader, start=start):
            self.position = (epoch, index + 1)
            seed = augment_seed(self.seed, epoch, self.sampler.micro_batch(index))
            yield TrainBatch(
                images.to(self.device, non_blocking=True), labels.to(self.device), epoch, index, seed
            )
        self.sampler.resume_at(-1, 0)

    def state_dict(self) -> dict:
        """The position, layout-free (``ShardedSampler.state``)."""
        return self.sampler.state(*self.position, self.batch_size)

    def load_state_dict(self, state: dict) -> None:
        self.position = (state["epoch"], self.sampler.load_state(state, self.batch_size))


class SeededImages(LabelledImages):
    """``LabelledImages`` indexed by ``(epoch, position)``: the transform's draws keyed by (seed, epoch,
    sample), the same whichever worker or rank decodes it."""

    def __init__(self, source, indices, transform, seed: int):
        super().__init__(source, indices, transform)
        self.seed = seed

    def __getitem__(self, key):
        epoch, index = key
        with seeded(self.seed, epoch, self.indices[index], 0x70696C):
            return super().__getitem__(index)


class FFCVTrainData:
    """The ``.beton`` samples ``items`` through pre-training's loader (crop decode, keyed crops and flips,
    timm's RandomResizedCrop scale), then :class:`~mae_trainer.data.batch_augment.BatchAugment` on the
    device."""

    def __init__(
        self, path, items, *, resolution, patch_size, augment, batch_size, seed, accumulation, num_workers,
        device,
    ):  # fmt: skip
        from ..data.resolution import ResolutionSchedule
        from ..data.train_loader import ProgressiveLoader

        schedule = ResolutionSchedule(
            kind="constant",
            resolution=resolution,
            mask_ratio=0.75,
            batch_size=batch_size,
            patch_size=patch_size,
        )
        self.loader = ProgressiveLoader(
            path,
            schedule,
            num_workers=max(1, num_workers),
            seed=seed,
            accumulation=accumulation,
            crop_decode=True,
            interpolation="bicubic",
            scale=RRC_SCALE_FINETUNE,
            indices=list(items),
            device=device,
        )
        self.augment, self.seed = augment, seed
        self.device = torch.device(device)

    def epoch(self, epoch: int) -> Iterator[TrainBatch]:
        for batch in self.loader.epoch(epoch):
            seed = augment_seed(self.seed, epoch, batch.micro_batch)
            images = self.augment(batch.images.to(self.device, non_blocking=True), seed)
            yield TrainBatch(images, batch.labels.to(self.device), epoch, batch.index, seed)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def eval_batches(source, positions, *, resolution, mean, std, batch_size, num_workers, rank, world, device):
    """This rank's share of the held-out samples ``positions`` (positions in ``source``'s order) as
    ``(normalised float images, labels)`` on ``device``: FFCV's centre-crop decoder for a ``.beton``,
    timm's evaluation transform (bicubic resize, centre crop 0.875) in ``DataLoader`` workers otherwise."""
    from ..data.eval_loader import eval_loader, eval_shard
    from ..data.normalize import normalize, stats_tensor

    device = torch.device(device)
    mine = [positions[i] for i in eval_shard(len(positions), rank, world)]
    if not mine:
        return
    if isinstance(source, BetonSource):
        items = [source.order[i] for i in mine]
        m, s = stats_tensor(mean, device), stats_tensor(std, device)
        loader = eval_loader(
            source.path,
            batch_size,
            resolution,
            num_workers=max(1, num_workers),
            crop_ratio=EVAL_CROP_RATIO,
            indices=items,
        )
        for images, labels in loader:  # FFCV reuses its buffers: normalize copies before the next batch
            yield normalize(images.to(device), m, s, torch.float32), labels.to(device)
        return
    images = LabelledImages(source, mine, eval_transform(resolution, mean, std))
    for x, labels in torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers):
        yield x.to(device), labels.to(device)
