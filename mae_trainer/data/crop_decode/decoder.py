"""``CropDecodeRGBImageDecoder``: FFCV's RandomResizedCrop decoder, decoding only the crop of JPEG samples.

It is a drop-in for ``ffcv.fields.rgb_image.RandomResizedCropRGBImageDecoder`` and subclasses it, so the
crop distribution, the buffers and the way a new ``output_size`` is picked up between epochs are FFCV's:
``declare_state_and_memory`` (run by every epoch's memory allocation) sizes the output buffer from
``self.output_size``, and the compiled code reads the size from that buffer, so nothing is recompiled.
The crop comes from FFCV's own ``get_random_crop``, drawn once per sample in the same order as the stock
decoder, so with the same numba RNG state both decoders pick identical crops.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.state import State
from numba import njit

from .native import REGION_FIELDS, crop_decode, imdecode, resize_area, resize_bicubic, resize_crop

INTERPOLATIONS = ("bicubic", "area")


def check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {interpolation!r}")
    return interpolation


def compile_sample_decoder(interpolation: str = "area", crop: bool = True) -> Callable:
    """Compile ``decode_sample(image_data, mode, height, width, i, j, h, w, scratch, region, output)``: crop
    ``(i, j, h, w)`` of one FFCV image sample resized into ``output`` (HWC uint8). ``scratch`` is the uint8
    buffer FFCV's decoder uses for a full decode, ``region`` an int64[5]. Returns the crop decoder's status
    (negative: the sample took FFCV's path; raw samples return 0). Usable from other FFCV decoders.

    ``crop``: decode only the crop of JPEG samples (else FFCV's full decode, TurboJPEG, as its stock
    decoder). ``interpolation``: ``"area"`` is FFCV's resize (OpenCV INTER_AREA) of the crop, or for a
    shrinking crop decode our area resampler on the exact (DCT-scaled, fractional) box; ``"bicubic"`` is our
    bicubic resampler (PIL's BICUBIC, antialiased) on the crop's pixels, the same for both decodes."""
    jpg = IMAGE_MODES["jpg"]
    # FFCV's compilation of the C wrappers' Python bodies (native.py's compiled ones serve Python callers)
    crop_decode_c = Compiler.compile(crop_decode.py_func)
    resize_area_c = Compiler.compile(resize_area.py_func)
    resize_bicubic_c = Compiler.compile(resize_bicubic.py_func)
    imdecode_c = Compiler.compile(imdecode.py_func)
    resize_crop_c = Compiler.compile(resize_crop.py_func)
    bicubic = check_interpolation(interpolation) == "bicubic"

    def decode_sample(image_data, mode, height, width, i, j, h, w, scratch, region, output):
        status = 0
        if crop and mode == jpg:
            status = crop_decode_c(
                image_data, height, width, i, j, h, w, output.shape[0], output.shape[1], scratch, region
            )
            if status >= 0:
                # The decoded region (rows, cols) starts at scaled pixel (row0, col0) and covers the crop.
                rows, cols, denominator, row0, col0 = region[0], region[1], region[2], region[3], region[4]
                decoded = scratch[: rows * cols * 3].reshape(rows, cols, 3)
                if not bicubic and (h < output.shape[0] or w < output.shape[1]):
                    # Enlarging (never DCT-scaled): FFCV's resize, identical to the stock decoder's output.
                    top, left = i - row0, j - col0
                    resize_crop_c(decoded, top, top + h, left, left + w, output)
                    return status
                # The crop box in scaled pixels when DCT-scaled (fractional edges then). Area: the same
                # filter as OpenCV's INTER_AREA (within 1 level), twice as fast.
                y, x = i / denominator - row0, j / denominator - col0
                scaled_h, scaled_w = h / denominator, w / denominator
                if bicubic:
                    resized = resize_bicubic_c(decoded, y, x, scaled_h, scaled_w, output)
                else:
                    resized = resize_area_c(decoded, y, x, scaled_h, scaled_w, output)
                if resized >= 0:
                    return status
                status = resized
        if mode == jpg:
            # FFCV's full decode (TurboJPEG), also for what the crop decoder rejects. Zeroed first then:
            # what neither can decode comes out black, not as a previous sample's leftovers.
            if crop:
                scratch[: 3 * height * width] = 0
            imdecode_c(image_data, scratch, height, width)
            image = scratch[: 3 * height * width].reshape(height, width, 3)
        else:
            image = image_data.reshape(height, width, 3)
        if bicubic:
            resize_bicubic_c(image, i, j, h, w, output)
        else:
            resize_crop_c(image, i, i + h, j, j + w, output)
        return status

    return Compiler.compile(decode_sample)


@njit(nogil=True)
def _nothing_before(batch_indices, position):
    return


@njit(nogil=True)
def _nothing_after(image):
    return


class CropDecodeRGBImageDecoder(RandomResizedCropRGBImageDecoder):
    """RandomResizedCrop to ``output_size`` (uint8 HWC) that, for JPEG samples, decodes only the crop
    (libjpeg crop/skip scanlines, DCT scaling when the crop is at least twice the output) and then resizes
    it: by default with OpenCV's INTER_AREA filter, as FFCV; ``interpolation="bicubic"``: PIL's bicubic.
    Raw samples, and JPEGs the crop decoder rejects, take FFCV's stock path. ``crop_decode=False`` decodes
    every JPEG fully (FFCV's path, same crops and resampling): the reference crop decode is compared with.

    The one decode body of both decodes, and of the seeded decoder
    (:class:`mae_trainer.data.augment.SeededRandomResizedCrop`, which adds per-sample hooks)."""

    def __init__(self, output_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "area",
                 crop_decode: bool = True):  # fmt: skip
        super().__init__(output_size, scale=scale, ratio=ratio)
        self.interpolation = check_interpolation(interpolation)
        self.crop_decode = crop_decode

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, tuple[AllocationQuery, ...]]:
        # FFCV's queries, read from self.output_size at every epoch's allocation: the output, and scratch
        # for a full decode (the crop region is never larger). Plus one int64[5] region record per sample.
        state, (output, scratch) = super().declare_state_and_memory(previous_state)
        return state, (output, scratch, AllocationQuery((REGION_FIELDS,), np.dtype("<i8")))

    def sample_hooks(self) -> tuple[Callable, Callable]:
        """Compiled ``(before, after)`` run for each sample: ``before(batch_indices, position)`` ahead of
        drawing its crop, ``after(image)`` on its output. Here none: crops come from numba's random state as
        it is, as with FFCV's stock decoder."""
        return _nothing_before, _nothing_after

    def generate_code(self) -> Callable:
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        decode_sample_c = compile_sample_decoder(self.interpolation, crop=self.crop_decode)
        get_crop_c = Compiler.compile(self.get_crop_generator)
        before_c, after_c = self.sample_hooks()
        scale = np.array(self.scale)
        ratio = np.array(self.ratio)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, scratch, regions = my_storage
            for dst_ix in my_range(len(batch_indices)):
                before_c(batch_indices, dst_ix)
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                i, j, h, w = get_crop_c(height, width, scale, ratio)
                decode_sample_c(
                    image_data, field["mode"], height, width, i, j, h, w,
                    scratch[dst_ix], regions[dst_ix], destination[dst_ix],
                )  # fmt: skip
                after_c(destination[dst_ix])
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode
