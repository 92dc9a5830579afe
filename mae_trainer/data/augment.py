"""Reproducible augmentation inside FFCV's compiled pipeline.

FFCV's stock RandomResizedCrop and RandomHorizontalFlip draw from numba's per-thread random generators,
whose states depend on which decode thread handles which sample: two runs with the same seed get different
crops, and a resumed run cannot replay the crops it would have seen. Here every sample re-seeds its
thread's generator from (run seed, sample id, the batch it is in, its position) before drawing its crop and
flip. The batch composition comes from the sampler's (seed, epoch) permutation, so crops differ from epoch
to epoch yet are identical for the same run seed — whatever the worker count, and after a resume.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .crop_decode.decoder import CropDecodeRGBImageDecoder

RRC_SCALE = (0.2, 1.0)  # MAE's RandomResizedCrop scale
RRC_RATIO = (3 / 4, 4 / 3)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(nogil=True)
def mix64(state: np.uint64, value: np.uint64) -> np.uint64:
    """One splitmix64 round folding ``value`` into ``state`` (wrapping uint64 arithmetic)."""
    z = state + _GOLDEN + value
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(nogil=True)
def sample_seed(run_seed, sample_id, batch_first, batch_last, position) -> int:
    """A 31-bit seed for one sample of one batch."""
    z = mix64(np.uint64(run_seed), np.uint64(sample_id))
    z = mix64(z, np.uint64(batch_first))
    z = mix64(z, np.uint64(batch_last))
    z = mix64(z, np.uint64(position))
    return int(z >> np.uint64(33))


@njit(nogil=True)
def flip_in_place(image: np.ndarray) -> None:
    """Mirror an ``(H, W, C)`` image left-right without a temporary image."""
    width = image.shape[1]
    for x in range(width // 2):
        for y in range(image.shape[0]):
            for c in range(image.shape[2]):
                left = image[y, x, c]
                image[y, x, c] = image[y, width - 1 - x, c]
                image[y, width - 1 - x, c] = left


class SeededRandomResizedCrop(CropDecodeRGBImageDecoder):
    """FFCV's RandomResizedCrop (same crop distribution, same decode and resize kernels) plus a horizontal
    flip with probability ``flip_prob``, both drawn reproducibly per sample (see the module docstring).
    ``output_size`` can change between epochs without recompiling, as with the stock decoder.

    ``crop_decode=True`` decodes only the crop of each JPEG sample (:mod:`mae_trainer.data.crop_decode`).
    ``interpolation`` resizes the crop: ``"bicubic"`` (default) as reference MAE's torchvision
    RandomResizedCrop (PIL's BICUBIC, antialiased when shrinking), ``"area"`` as FFCV (OpenCV's INTER_AREA).
    Both decodes resample the same crop box, see ``compile_sample_decoder``; the decode body is
    :class:`CropDecodeRGBImageDecoder`'s, with the seeding and the flip as its per-sample hooks."""

    includes_flip = True  # the loader adds no separate flip stage

    def __init__(self, output_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed: int = 0,
                 flip_prob: float = 0.5, crop_decode: bool = False,
                 interpolation: str = "bicubic"):  # fmt: skip
        super().__init__(output_size, scale=scale, ratio=ratio, interpolation=interpolation,
                         crop_decode=crop_decode)  # fmt: skip
        self.seed = seed
        self.flip_prob = flip_prob

    def sample_hooks(self):
        run_seed, flip_prob = np.uint64(self.seed), self.flip_prob

        @njit(nogil=True)
        def reseed(batch_indices, position):
            count = len(batch_indices)
            np.random.seed(
                sample_seed(
                    run_seed, batch_indices[position], batch_indices[0], batch_indices[count - 1], position
                )
            )

        @njit(nogil=True)
        def flip(image):
            if np.random.random() < flip_prob:
                flip_in_place(image)

        return reseed, flip
