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
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder, get_random_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from numba import njit

from .crop_decode.decoder import check_interpolation, compile_sample_decoder
from .crop_decode.native import REGION_FIELDS

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


class SeededRandomResizedCrop(RandomResizedCropRGBImageDecoder):
    """FFCV's RandomResizedCrop (same crop distribution, same decode and resize kernels) plus a horizontal
    flip with probability ``flip_prob``, both drawn reproducibly per sample (see the module docstring).
    ``output_size`` can change between epochs without recompiling, as with the stock decoder.

    ``crop_decode=True`` decodes only the crop of each JPEG sample (:mod:`mae_trainer.data.crop_decode`).
    ``interpolation`` resizes the crop: ``"bicubic"`` (default) as reference MAE's torchvision
    RandomResizedCrop (PIL's BICUBIC, antialiased when shrinking), ``"area"`` as FFCV (OpenCV's INTER_AREA).
    Both decodes resample the same crop box, see ``compile_sample_decoder``."""

    includes_flip = True  # the loader adds no separate flip stage

    def __init__(self, output_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed: int = 0,
                 flip_prob: float = 0.5, crop_decode: bool = False,
                 interpolation: str = "bicubic"):  # fmt: skip
        super().__init__(output_size, scale=scale, ratio=ratio)
        self.interpolation = check_interpolation(interpolation)
        self.seed = seed
        self.flip_prob = flip_prob
        self.crop_decode = crop_decode

    def declare_state_and_memory(self, previous_state):
        state, queries = super().declare_state_and_memory(previous_state)
        if self.crop_decode:  # one int64 region record per sample for the crop decoder
            queries = (*queries, AllocationQuery((REGION_FIELDS,), np.dtype("<i8")))
        return state, queries

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        decode_sample_c = compile_sample_decoder(self.interpolation, crop=self.crop_decode)
        get_crop_c = Compiler.compile(get_random_crop)
        seed_c, flip_c = sample_seed, flip_in_place  # already compiled (numba needs callees compiled)
        scale, ratio = np.array(self.scale), np.array(self.ratio)
        run_seed, flip_prob = np.uint64(self.seed), self.flip_prob
        with_regions = self.crop_decode

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, scratch = my_storage[0], my_storage[1]
            regions = my_storage[2] if with_regions else my_storage[1]  # unused without crop decode
            count = len(batch_indices)
            for dst_ix in my_range(count):
                source_ix = batch_indices[dst_ix]
                np.random.seed(
                    seed_c(run_seed, source_ix, batch_indices[0], batch_indices[count - 1], dst_ix)
                )
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                i, j, h, w = get_crop_c(height, width, scale, ratio)
                decode_sample_c(image_data, field["mode"], height, width, i, j, h, w, scratch[dst_ix],
                                regions[dst_ix], destination[dst_ix])  # fmt: skip
                if np.random.random() < flip_prob:
                    flip_c(destination[dst_ix])
            return destination[:count]

        decode.is_parallel = True
        return decode
