"""The training loader (``ProgressiveLoader``): an FFCV loader over a ``.beton`` whose epochs follow a
resolution schedule, and the batches it yields (``Batch``), each carrying its epoch's :class:`Stage`.

Each epoch: ``stage = schedule.stage(epoch)`` once, :meth:`ProgressiveLoader.set_stage` sets FFCV's batch
size and the crop decoder's output size, then FFCV iterates. FFCV reads both only when an epoch's iteration
starts (``Loader.__iter__``: the order from the sampler, then ``len(loader)`` batches of ``batch_size``,
then buffers allocated from the decoder's ``output_size``), so nothing is recompiled between stages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .resolution import ResolutionSchedule, Stage
from .sampler import ShardedSampler


@dataclass
class Batch:
    """One batch and the stage it belongs to. ``images`` are uint8 ``(B, 3, R, R)``, ``R`` the stage's
    resolution and ``B`` its batch size; ``labels`` None for a file written without labels."""

    images: torch.Tensor
    labels: torch.Tensor | None
    stage: Stage
    epoch: int
    index: int  # this rank's batch index within the epoch
    micro_batch: int  # the epoch-wide micro-batch index, the same whatever the layout (sampler.py)
    noise_seed: int  # seeds this micro-batch's mask noise: a function of (run seed, epoch, micro_batch)

    @property
    def resolution(self) -> int:
        return self.stage.resolution

    @property
    def mask_ratio(self) -> float:
        return self.stage.mask_ratio

    def mask_noise(self, num_patches: int, device) -> torch.Tensor:
        """MAE's per-patch masking noise ``(B, num_patches)`` for this micro-batch, drawn on ``device`` from
        a generator seeded by :attr:`noise_seed`: the same masks on any number of ranks, after a resume,
        and in every run with the same seed (no host read, no global RNG touched)."""
        generator = torch.Generator(device=device).manual_seed(self.noise_seed)
        return torch.rand(self.images.shape[0], num_patches, generator=generator, device=device)


def noise_seed(seed: int, epoch: int, micro_batch: int) -> int:
    """A 63-bit seed for the masks of one micro-batch of one epoch of a run."""
    return int(
        np.random.SeedSequence([seed, epoch, micro_batch, 0x6D61736B]).generate_state(1, np.uint64)[0] >> 1
    )


def on_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class ProgressiveLoader:
    """FFCV loader over a ``.beton``, in the order of a :class:`ShardedSampler`, one stage per epoch.

    RandomResizedCrop (MAE's scale 0.2–1, ratio 3/4–4/3) and horizontal flip, drawn reproducibly from
    ``seed`` (:mod:`mae_trainer.data.augment`), uint8 output; normalisation happens on the device in the
    training step. ``crop_decode`` decodes only the crop of JPEG samples (same crops, seeded the same way).
    ``interpolation`` resizes the crops: ``"bicubic"`` (reference MAE's PIL bicubic) or ``"area"``.
    ``decoder`` replaces the crop decoder (e.g. crop decode); it must honour a changed
    ``output_size`` between epochs. ``accumulation``: micro-steps per optimizer step (epochs hold whole
    optimizer steps, :mod:`~mae_trainer.data.sampler`). ``device``: a CUDA device puts the images there
    from the pipeline (pinned host buffers, non-blocking copies); otherwise they stay on the host.
    ``scale``: RandomResizedCrop's area range (default MAE's ``RRC_SCALE``; fine-tuning uses timm's
    0.08–1). ``indices``: the file's samples to use (default all); the sampler permutes them, crops stay
    seeded by the file's sample ids, and positions (``state_dict``) count within the subset.
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
        accumulation: int = 1,
        os_cache: bool = True,
        batches_ahead: int = 4,
        decoder=None,
        crop_decode: bool = False,
        interpolation: str = "bicubic",
        device: torch.device | str | None = None,
        scale: tuple[float, float] | None = None,
        indices=None,
    ):
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        from .augment import RRC_RATIO, RRC_SCALE, SeededRandomResizedCrop
        from .beton import field_names
        from .jit_cache import cached_pipeline

        self.schedule = schedule
        scale = RRC_SCALE if scale is None else tuple(scale)
        self.sampler = ShardedSampler(seed=seed, rank=rank, world_size=world_size, accumulation=accumulation)
        first = schedule.stage(0)
        if decoder is None:
            decoder = SeededRandomResizedCrop(
                (first.resolution,) * 2, scale=scale, ratio=RRC_RATIO, seed=seed, crop_decode=crop_decode,
                interpolation=interpolation,
            )  # fmt: skip
        self.decoder = decoder
        image_pipeline = [decoder]
        if not getattr(decoder, "includes_flip", False):
            image_pipeline.append(RandomHorizontalFlip())
        # On a GPU the images leave the pipeline on the device: FFCV allocates its host buffers pinned when
        # CUDA is present, and ToDevice copies each batch from them without blocking, on a CUDA stream of
        # the batch's slot, while the model works on the previous batch; the training stream waits for that
        # copy only when it takes the batch. Normalisation happens on the device, in the training step.
        # (On the device, ToTorchImage gives a channels-last view: its NCHW copy would go to a host buffer.)
        if on_cuda(device):
            to_torch = [ToDevice(torch.device(device), non_blocking=True), ToTorchImage(channels_last=True)]
        else:
            to_torch = [ToTorchImage(channels_last=False)]
        pipelines = {"image": [*image_pipeline, ToTensor(), *to_torch]}
        self.labelled = "label" in field_names(path)  # a file written without labels: images only
        if self.labelled:
            pipelines["label"] = [IntDecoder(), ToTensor(), Squeeze(1)]
        with cached_pipeline():  # FFCV's pipeline from numba's on-disk cache (jit_cache.py)
            self.loader = Loader(
                str(path),
                batch_size=first.batch_size,
                num_workers=num_workers,
                order=self.sampler,
                os_cache=os_cache,
                batches_ahead=batches_ahead,
                drop_last=True,
                pipelines=pipelines,
                indices=None if indices is None else np.asarray(indices, dtype=np.int64),
            )
        self.set_stage(first)
        self.position = (0, 0)  # (epoch, batches consumed in it)

    def set_stage(self, stage: Stage) -> None:
        """Make the next epoch ``stage``'s: FFCV's ``batch_size`` and the decoder's ``output_size``."""
        self.loader.batch_size = stage.batch_size
        self.decoder.output_size = (stage.resolution, stage.resolution)
        self.stage = stage

    def batches_in_epoch(self, epoch: int) -> int:
        """Whole batches of ``epoch`` on this rank (its stage's batch size; a resume point not counted)."""
        return self.sampler.batches(self.schedule.stage(epoch).batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch`` (from the resume point when one was loaded for it)."""
        stage = self.schedule.stage(epoch)
        self.set_stage(stage)
        start = self.sampler.start_batch(epoch)
        self.loader.next_epoch = epoch
        self.position = (epoch, start)
        sampler, seed = self.sampler, self.sampler.seed
        for index, fields in enumerate(self.loader, start=start):
            self.position = (epoch, index + 1)
            micro = sampler.micro_batch(index)
            images, labels = fields[0], fields[1] if self.labelled else None
            yield Batch(images, labels, stage, epoch, index, micro, noise_seed(seed, epoch, micro))
        self.sampler.resume_at(-1, 0)

    def state_dict(self) -> dict:
        """The position, layout-free (``ShardedSampler.state``): the epoch and the samples of it consumed by
        all ranks together."""
        epoch, batch = self.position
        return self.sampler.state(epoch, batch, self.schedule.stage(epoch).batch_size)

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state``'s position, saved by this or any other layout of the same global batch."""
        epoch = state["epoch"]
        self.position = (epoch, self.sampler.load_state(state, self.schedule.stage(epoch).batch_size))
