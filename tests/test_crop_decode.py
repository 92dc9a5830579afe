"""Crop decode (``mae_trainer.data.crop_decode``) on real photos: the C decoder against full decodes, every
JPEG flavour, bad input, buffer guards, the FFCV decoder against FFCV's stock RandomResizedCrop with the same
random state, and a two-epoch ProgressiveLoader run."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numba import njit
from PIL import Image

from mae_trainer.data.crop_decode import CropDecodeRGBImageDecoder, native
from mae_trainer.data.crop_decode.decoder import compile_sample_decoder
from mae_trainer.data.demo import demo_samples, load_photo

GUARD = 64  # bytes checked untouched on each side of every buffer the C code writes
MAE_SCALE = (0.2, 1.0)


def encode(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=options.pop("quality", 90), **options)
    return out.getvalue()


# Every JPEG flavour the decoder must handle, encoded by libjpeg (through PIL) from a real photo.
FLAVOURS = {
    "444": dict(subsampling=0),
    "422": dict(subsampling=1),
    "420": dict(subsampling=2),
    "progressive": dict(progressive=True),
    "progressive444": dict(progressive=True, subsampling=0),
    "restart": dict(restart_marker_blocks=3),
    "restart_rows": dict(restart_marker_rows=1, subsampling=1),
    "gray": dict(),
}


def flavour_jpeg(flavour: str, size: tuple[int, int]) -> bytes:
    photo = load_photo("coffee.png").crop((20, 10, 420, 380)).resize(size, Image.BICUBIC)
    if flavour == "gray":
        photo = photo.convert("L")
    data = encode(photo, **FLAVOURS[flavour])
    if flavour.startswith("restart"):
        assert b"\xff\xdd" in data  # a DRI marker: the file really has restart intervals
    if flavour.startswith("progressive"):
        assert b"\xff\xc2" in data  # SOF2: really progressive
    return data


def guarded(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A buffer of ``size`` bytes inside a larger one filled with a pattern: ``(outer, inner)``."""
    outer = np.full(size + 2 * GUARD, 0xA5, dtype=np.uint8)
    return outer, outer[GUARD : GUARD + size]


def assert_guards(outer: np.ndarray) -> None:
    assert (outer[:GUARD] == 0xA5).all() and (outer[-GUARD:] == 0xA5).all(), "wrote outside its buffer"


def decode(data: bytes, size, box, out_size, scratch_size: int | None = None):
    """cropjpeg_decode of the ``size = (height, width)`` JPEG ``data``, with guard bytes around the scratch
    buffer (by default the full image's bytes, as FFCV provides): ``(status, region array, region info)``."""
    scratch_size = size[0] * size[1] * 3 if scratch_size is None else scratch_size
    outer, scratch = guarded(scratch_size)
    region = np.zeros(native.REGION_FIELDS + 2, dtype=np.int64)
    region[-2:] = -7  # the C side writes exactly REGION_FIELDS values
    source = np.frombuffer(data, dtype=np.uint8)
    status = native.crop_decode(source, *size, *box, *out_size, scratch, region)
    assert_guards(outer)
    assert (region[-2:] == -7).all()
    rows, cols = int(region[0]), int(region[1])
    assert (scratch[rows * cols * 3 :] == 0xA5).all(), "wrote past the region"
    image = scratch[: rows * cols * 3].reshape(rows, cols, 3).copy() if status >= 0 else None
    return status, image, region[: native.REGION_FIELDS]


def edge_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Crop boxes (y, x, h, w) touching every edge and corner, odd offsets, single pixels."""
    h2, w2 = max(1, height // 2), max(1, width // 2)
    boxes = [
        (0, 0, height, width),  # everything
        (0, 0, h2, w2),  # top-left
        (height - h2, width - w2, h2, w2),  # bottom-right
        (0, width - w2, height, w2),  # right strip, full height
        (height - h2, 0, h2, width),  # bottom strip, full width
        (min(3, height - 1), min(5, width - 1), max(1, height - 7), max(1, width - 9)),  # odd interior
        (height - 1, width - 1, 1, 1),  # last pixel
        (0, 0, 1, 1),  # first pixel
    ]
    return [(y, x, min(h, height - y), min(w, width - x)) for y, x, h, w in boxes]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("size", [(131, 97), (8, 8), (509, 487)], ids=["131x97", "8x8", "509x487"])
def test_crop_equals_the_same_region_of_a_full_decode(flavour, size):
    data = flavour_jpeg(flavour, size)
    width, height = size
    status, full, info = decode(data, (height, width), (0, 0, height, width), (height, width))
    assert status == native.OK and full.shape == (height, width, 3) and info[2] == 1
    with Image.open(io.BytesIO(data)) as image:
        reference = np.asarray(image.convert("RGB")).astype(int)
    # PIL decodes with libjpeg's accurate IDCT, we with the fast one (FFCV's TJFLAG_FASTDCT)
    assert np.abs(full.astype(int) - reference).max() <= 8
    if flavour == "gray":
        assert (full[..., 0] == full[..., 1]).all() and (full[..., 1] == full[..., 2]).all()

    for denominator in (1, 2, 4, 8):  # the region equals the same pixels of a full decode at that scale
        if min(height, width) < denominator:
            continue
        out = (height // denominator, width // denominator)
        status, scaled, info = decode(data, (height, width), (0, 0, height, width), out)
        assert status == native.OK and info[2] == denominator
        for box in edge_boxes(height, width):
            y, x, h, w = box
            if min(h, w) < denominator:
                continue
            status, region, info = decode(data, (height, width), box, (h // denominator, w // denominator))
            rows, cols, denom, row0, col0 = (int(v) for v in info)
            assert status == native.OK and denom == denominator
            # it covers the box's scaled span [y/d, (y+h)/d) (clipped to the scaled image), rows exactly
            first, end = x // denom, min(-(-(x + w) // denom), scaled.shape[1])
            assert row0 == y // denom and row0 + rows == min(-(-(y + h) // denom), scaled.shape[0])
            assert col0 <= first and col0 + cols >= end
            # the box's pixels are those of the full decode (libjpeg's extra edge columns may not be)
            expected = scaled[row0 : row0 + rows, first:end]
            assert np.array_equal(region[:, first - col0 : end - col0], expected), (box, denom)


def test_largest_dct_scale_that_keeps_the_output_size():
    data = flavour_jpeg("420", (509, 487))
    for (h, w), out, expected in [
        ((487, 509), (224, 224), 2),
        ((487, 509), (243, 254), 2),
        ((487, 509), (244, 254), 1),  # 487 < 2 * 244
        ((400, 400), (100, 100), 4),
        ((400, 400), (50, 50), 8),
        ((400, 400), (10, 10), 8),  # libjpeg scales by 1/8 at most
        ((100, 400), (26, 26), 2),  # the short side decides
    ]:
        status, region, info = decode(data, (487, 509), (0, 0, h, w), out)
        assert status == native.OK and info[2] == expected, (h, w, out)
        assert region.shape[0] >= out[0] and region.shape[1] >= out[1]


def test_bad_input_returns_an_error_and_stays_in_bounds():
    good = flavour_jpeg("420", (131, 97))
    size = (97, 131)  # (height, width)
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    assert decode(garbage, size, (0, 0, 10, 10), (10, 10))[0] == native.ERR_JPEG
    assert decode(b"\xff\xd8\xff", size, (0, 0, 10, 10), (10, 10))[0] == native.ERR_JPEG
    assert decode(good[:150], size, (0, 0, 10, 10), (10, 10))[0] in (native.ERR_JPEG, native.CORRUPT)
    # truncated inside the scan: libjpeg pads the missing rows and warns
    half = good[: len(good) // 2]
    assert decode(half, size, (0, 0, 97, 131), (97, 131))[0] == native.CORRUPT
    assert decode(half, size, (80, 0, 17, 131), (17, 131))[0] == native.CORRUPT
    damaged = bytearray(good)
    for offset in range(700, len(good) - 2, 97):  # bytes flipped all over the entropy-coded data
        damaged[offset] ^= 0x5A
    status = decode(bytes(damaged), size, (0, 0, 97, 131), (97, 131))[0]
    assert status in (native.OK, native.CORRUPT, native.ERR_JPEG)
    # crop boxes outside the image, empty boxes and outputs
    for box in [(0, 0, 98, 131), (0, 0, 97, 132), (1, 0, 97, 131), (-1, 0, 10, 10), (0, 0, 0, 5)]:
        assert decode(good, size, box, (8, 8))[0] == native.ERR_ARGS, box
    assert decode(good, size, (0, 0, 10, 10), (0, 8))[0] == native.ERR_ARGS
    assert decode(b"", size, (0, 0, 10, 10), (10, 10))[0] == native.ERR_ARGS
    # FFCV's metadata and the file disagree about the size
    assert decode(good, (96, 131), (0, 0, 10, 10), (10, 10))[0] == native.ERR_SIZE
    # a scratch buffer one byte short of the region
    region_bytes = 97 * 131 * 3
    assert (
        decode(good, size, (0, 0, 97, 131), (97, 131), scratch_size=region_bytes - 1)[0] == native.ERR_BUFFER
    )
    assert decode(good, size, (0, 0, 97, 131), (97, 131), scratch_size=region_bytes)[0] == native.OK
    # CMYK: libjpeg cannot convert it to RGB (nor can FFCV's TurboJPEG decode)
    cmyk = encode(load_photo("coffee.png").resize((64, 48)).convert("CMYK"))
    assert decode(cmyk, (48, 64), (0, 0, 48, 64), (48, 64))[0] == native.ERR_JPEG


def area_reference(image: np.ndarray, y, x, h, w, out_h, out_w) -> np.ndarray:
    """Exact area resampling of a fractional box, in float64 (numpy), for checking resample.c."""

    def weights(start, length, n_source, n_out):
        edges = start + np.arange(n_out + 1) * (length / n_out)
        pixels = np.arange(n_source)
        overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
        overlap = np.clip(overlap, 0, None)
        return overlap / overlap.sum(axis=1, keepdims=True)

    rows, cols = weights(y, h, image.shape[0], out_h), weights(x, w, image.shape[1], out_w)
    return np.einsum("ij,jkc,lk->ilc", rows, image.astype(np.float64), cols, optimize=True)


def test_area_resampler_matches_exact_area_and_opencv():
    import cv2

    image = np.asarray(load_photo("astronaut.png").resize((203, 157)))
    for box, out in [
        ((0, 0, 157, 203), (78, 101)),
        ((10.25, 3.5, 120.5, 150.75), (100, 100)),  # fractional edges, factor 1.2-1.5
        ((0.4, 0.9, 156.6, 202.1), (11, 13)),  # large factors
        ((5, 7, 60, 60), (60, 60)),  # factor 1: a copy
    ]:
        outer, flat = guarded(out[0] * out[1] * 3)
        result = flat.reshape(*out, 3)
        assert native.resize_area(image, *box, result) == native.OK
        assert_guards(outer)
        assert np.abs(result.astype(float) - area_reference(image, *box, *out)).max() <= 1.0, box
    # whole-pixel boxes: what cv2.resize(INTER_AREA) computes, up to rounding
    for (y, x, h, w), (out_h, out_w) in [((1, 2, 156, 200), (78, 100)), ((3, 10, 150, 177), (97, 61))]:
        result = np.empty((out_h, out_w, 3), np.uint8)
        assert native.resize_area(image, y, x, h, w, result) == native.OK
        crop = np.ascontiguousarray(image[y : y + h, x : x + w])
        expected = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_AREA)
        assert np.abs(result.astype(int) - expected).max() <= 1
    for box in [(0, 0, 158, 203), (0, 0, 157, 204), (-0.5, 0, 10, 10), (0, 0, 0, 10)]:
        assert native.resize_area(image, *box, result) == native.ERR_ARGS, box


def pil_bicubic(image: np.ndarray, y, x, h, w, out_h, out_w) -> np.ndarray:
    """PIL's BICUBIC resize of the fractional box (y, x, h, w) of ``image``, given only the pixels the box
    touches (torchvision's RandomResizedCrop crops, then resizes): ``crop(...).resize(box=...)``."""
    top, left = math.floor(y), math.floor(x)
    crop = Image.fromarray(image).crop((left, top, math.ceil(x + w), math.ceil(y + h)))
    box = (x - left, y - top, x + w - left, y + h - top)
    return np.asarray(crop.resize((out_w, out_h), Image.BICUBIC, box=box))


# Fixed point as Pillow's 8-bit path (22-bit coefficients computed as Pillow does): where the two agree on
# the order of the passes the bytes are Pillow's exactly. They differ where a kernel overshoots past 0 or
# 255 and the other order would clamp differently: the installed Pillow 13 does not always run the horizontal
# pass first (its sources do), ours runs the pass with the smaller intermediate image first. This test's 96
# boxes: 98.3 % of pixels equal, 99.997 % within 1, max 8 (float resampler before: 97.0 %, 99.996 %, 7).
PIL_EQUAL = 0.98
PIL_WITHIN_ONE = 0.99995
PIL_MAX_DIFFERENCE = 8


def test_bicubic_resampler_matches_pil():
    rng = np.random.default_rng(11)
    counts, worst = np.zeros(256, np.int64), 0
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"):
        image = np.asarray(load_photo(name))
        rows, cols = image.shape[:2]
        cases = [
            ((0, 0, rows, cols), (224, 224)),  # whole photo, shrink ~2x
            ((10, 20, 100, 150), (224, 224)),  # enlarge
            ((0.4, 0.9, rows - 1.3, cols - 2.1), (11, 13)),  # fractional edges, large factors
            ((5, 7, 60, 60), (60, 60)),  # factor 1: a copy
        ]
        for _ in range(20):
            h, w = rng.uniform(8, rows), rng.uniform(8, cols)
            box = (rng.uniform(0, rows - h), rng.uniform(0, cols - w), h, w)
            cases.append((box, tuple(int(v) for v in rng.integers(16, 260, 2))))
        for box, out in cases:
            outer, flat = guarded(out[0] * out[1] * 3)
            result = flat.reshape(*out, 3)
            assert native.resize_bicubic(image, *box, result) == native.OK
            assert_guards(outer)
            difference = np.abs(result.astype(int) - pil_bicubic(image, *box, *out))
            counts += np.bincount(difference.ravel(), minlength=256)
            worst = max(worst, int(difference.max()))
        copy = np.empty((60, 60, 3), np.uint8)
        native.resize_bicubic(image, 5, 7, 60, 60, copy)
        assert np.array_equal(copy, image[5:65, 7:67])  # factor 1 on whole pixels: exactly the crop
    within_one = counts[:2].sum() / counts.sum()
    print(f"bicubic vs PIL: equal {counts[0] / counts.sum():.4f}, within 1 {within_one:.6f}, max {worst}")
    assert counts[0] / counts.sum() >= PIL_EQUAL
    assert within_one >= PIL_WITHIN_ONE and worst <= PIL_MAX_DIFFERENCE
    result = np.empty((8, 8, 3), np.uint8)
    for box in [(0, 0, rows + 1, cols), (0, 0, rows, cols + 1), (-0.5, 0, 10, 10), (0, 0, 0, 10)]:
        assert native.resize_bicubic(image, *box, result) == native.ERR_ARGS, box


def test_bicubic_vector_paths_give_the_portable_bytes():
    """SSE4.1 and AVX2 (whichever this CPU has) give the portable C path's bytes exactly: enlarging,
    shrinking, fractional boxes, 1-pixel boxes and outputs, widths that are no multiple of a vector."""
    best = native.set_simd(-1)
    rng = np.random.default_rng(5)
    image = np.asarray(load_photo("coffee.png").resize((211, 157)))
    rows, cols = image.shape[:2]
    cases = [
        ((0, 0, rows, cols), (1, 1)),
        ((0, 0, 1, 1), (37, 29)),  # one pixel, enlarged
        ((rows - 1, cols - 1, 1, 1), (3, 5)),  # the last pixel
        ((0.5, 0.25, 0.5, 0.75), (7, 9)),  # inside one pixel
        ((0, 0, rows, cols), (rows, cols)),  # factor 1
        ((0, 0, rows, cols), (13, 211)),  # one pass only
        ((0, 0, rows, cols), (157, 33)),
        ((3.7, 1.1, 150.2, 2.3), (31, 100)),  # tall box, wide output
        ((0, 0, rows, cols), (rows // 2 + 1, cols // 3 + 1)),  # shrink
    ]
    for _ in range(40):
        h, w = rng.uniform(0.2, rows), rng.uniform(0.2, cols)
        box = (rng.uniform(0, rows - h), rng.uniform(0, cols - w), h, w)
        cases.append((box, tuple(int(v) for v in rng.integers(1, 70, 2))))
    try:
        for box, out in cases:
            results = []
            for level in range(best + 1):
                assert native.set_simd(level) == level
                outer, flat = guarded(out[0] * out[1] * 3)
                assert native.resize_bicubic(image, *box, flat.reshape(*out, 3)) == native.OK
                assert_guards(outer)
                results.append(flat.copy())
            for level, result in enumerate(results[1:], 1):
                assert np.array_equal(result, results[0]), (native.SIMD_LEVELS[level], box, out)
    finally:
        native.set_simd(-1)
    print(f"vector paths checked: {native.SIMD_LEVELS[: best + 1]}")


def test_simd_level_from_the_environment():
    """``MAE_TRAINER_SIMD`` picks the path unless ``set_simd`` is called; a level the CPU lacks: the best."""
    # the library alone, by ctypes (importing the package would take seconds: numba, FFCV, torch)
    code = f"import ctypes; print(ctypes.CDLL({native._library_path()!r}).cropjpeg_simd())"
    best = native.set_simd(-1)
    for requested, expected in [("0", 0), ("9", best), ("", best)]:
        env = {**os.environ, "MAE_TRAINER_SIMD": requested}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert int(done.stdout) == expected, requested


@pytest.mark.parametrize("crop", [False, True], ids=["full_decode", "crop_decode"])
def test_sample_decoder_bicubic_is_pil_bicubic_of_the_decoded_crop(crop):
    """Both decodes, bicubic: PIL's resize of the same crop of the same decoded image — at full scale, or of
    the DCT-scaled image over the fractional box when the crop decoder scales."""
    decode_sample = compile_sample_decoder("bicubic", crop=crop)
    photo = load_photo("chelsea.png").resize((451, 300), Image.BICUBIC)
    data = np.frombuffer(encode(photo), np.uint8)
    height, width = np.uint32(300), np.uint32(451)
    scratch = np.zeros(300 * 451 * 3, np.uint8)
    region = np.zeros(native.REGION_FIELDS, np.int64)
    scaled = {}  # the whole image decoded by libjpeg at 1/d: what a crop decode at 1/d reads from
    for d in (1, 2, 4, 8):
        status, scaled[d], _ = decode(data.tobytes(), (300, 451), (0, 0, 300, 451), (300 // d, 451 // d))
        assert status == native.OK
    denominators = set()
    for (i, j, h, w), size in [
        ((0, 0, 300, 451), 224),  # whole image, d = 1 (not twice 224)
        ((13, 27, 250, 301), 112),  # d = 2, odd offsets: fractional box at 1/2
        ((7, 9, 290, 433), 64),  # d = 4
        ((100, 200, 60, 80), 160),  # enlarging
        ((1, 3, 297, 446), 7),  # d = 8: tiny output
    ]:
        output = np.zeros((size, size, 3), np.uint8)
        status = decode_sample(data, 0, height, width, i, j, h, w, scratch, region, output)
        assert status == native.OK
        d = int(region[2]) if crop else 1
        denominators.add(d)
        expected = pil_bicubic(scaled[d], i / d, j / d, h / d, w / d, size, size)
        difference = np.abs(output.astype(int) - expected)
        assert (difference <= 1).mean() >= PIL_WITHIN_ONE and difference.max() <= PIL_MAX_DIFFERENCE
    assert denominators == ({1, 2, 4, 8} if crop else {1})


def test_sample_decoder_falls_back_to_ffcv_for_what_it_cannot_crop():
    decode_sample = compile_sample_decoder()
    photo = load_photo("coffee.png").resize((96, 72))
    height, width = np.uint32(72), np.uint32(96)
    scratch = np.full(96 * 72 * 3, 77, np.uint8)  # stale data from "another sample"
    region = np.zeros(native.REGION_FIELDS, np.int64)
    results = {}
    for name, data, mode in [
        ("crop", encode(photo, subsampling=0, quality=95), 0),
        # twice the size FFCV's metadata says: FFCV's TurboJPEG decodes it at 1/2 scale, libjpeg refuses
        ("mismatch", encode(photo.resize((192, 144), Image.BICUBIC), subsampling=0, quality=95), 0),
        ("cmyk", encode(photo.convert("CMYK")), 0),  # nobody can decode it
        ("raw", np.asarray(photo).tobytes(), 1),
    ]:
        for out in (32, 16):  # 16: a DCT-scaled crop decode
            output = np.zeros((out, out, 3), np.uint8)
            source = np.frombuffer(data, np.uint8)
            status = decode_sample(source, mode, height, width, 8, 16, 48, 64, scratch, region, output)
            results[name, out] = (status, output, int(region[2]))
    assert [results["crop", out][::2] for out in (32, 16)] == [(native.OK, 1), (native.OK, 2)]
    assert results["raw", 32][0] == native.OK and results["mismatch", 32][0] == native.ERR_SIZE
    for out in (32, 16):
        reference = results["raw", out][1].astype(int)
        for name in ("crop", "mismatch"):
            difference = np.abs(results[name, out][1].astype(int) - reference).mean()
            assert difference < 6, (name, out, difference)  # the same crop of the same photo
        assert results["cmyk", out][0] == native.ERR_JPEG and not results["cmyk", out][1].any()


# ---- the FFCV decoder ------------------------------------------------------------------------------------


def write_beton(path, images, labels=None, *, jpeg_bytes=False, mode="jpg"):
    """A real .beton. ``jpeg_bytes``: the images are finished JPEG files stored as they are (FFCV's
    writer would re-encode them with OpenCV): the field's ``encode`` is replaced on the instance, so the
    file still records a plain RGBImageField."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.writer import DatasetWriter

    field = RGBImageField(write_mode=mode, max_resolution=512)
    if jpeg_bytes:

        def store(destination, data, malloc):
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
            destination["mode"] = IMAGE_MODES["jpg"]
            destination["height"], destination["width"] = height, width
            destination["data_ptr"], storage = malloc(len(data))
            storage[:] = np.frombuffer(data, np.uint8)

        field.encode = store
    labels = labels or [0] * len(images)
    writer = DatasetWriter(str(path), {"image": field, "label": IntField()}, num_workers=2)
    writer.from_indexed_dataset(list(zip(images, labels)), chunksize=16)
    return path


@njit
def seed_numba(seed):
    np.random.seed(seed)  # numba's generator of the calling thread, the one get_random_crop draws from


class DirectRun:
    """An FFCV decoder compiled once and run in this thread on every sample of a .beton, without a
    Loader, so that numba's random state (hence the crops) can be seeded: Loader threads cannot be."""

    def __init__(self, decoder, path):
        from ffcv.memory_managers import OSCacheManager
        from ffcv.pipeline.compiler import Compiler
        from ffcv.reader import Reader

        reader = Reader(str(path))
        self.manager = OSCacheManager(reader)
        self.metadata = reader.metadata["f0"]
        self.indices = np.arange(int(reader.num_samples))
        self.decoder = decoder
        decoder.accept_field(reader.handlers["image"])
        decoder.accept_globals(self.metadata, self.manager.compile_reader())
        threads = (Compiler.num_threads, torch.get_num_threads())
        Compiler.set_num_threads(1)  # compile without prange: runs in this thread
        try:
            self.code = Compiler.compile(decoder.generate_code())
        finally:
            Compiler.set_num_threads(threads[0])
            torch.set_num_threads(threads[1])

    def __call__(self, output_size, seed):
        """``(images, buffers)``: buffers are re-declared from ``output_size`` as every FFCV epoch does."""
        from ffcv.pipeline.graph import INITIAL_STATE

        self.decoder.output_size = output_size
        _, queries = self.decoder.declare_state_and_memory(INITIAL_STATE)
        buffers = tuple(np.zeros((len(self.indices), *q.shape), q.dtype) for q in queries)
        with self.manager.schedule_epoch([self.indices]) as context:
            seed_numba(seed)
            images = self.code(self.indices, buffers, self.metadata, context.state).copy()
        return images, buffers


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b).max()) if a.size else 0


def psnr_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


@pytest.fixture(scope="module")
def photo_beton(tmp_path_factory):
    """64 real photo crops (short side 256-480), JPEG-encoded by FFCV's writer (OpenCV) at max side 512."""
    images = [np.asarray(image) for image, _ in demo_samples(per_photo=4, min_side=256, max_side=480)]
    return write_beton(tmp_path_factory.mktemp("crop") / "photos.beton", images)


def test_same_crops_as_ffcv_stock_decoder(photo_beton):
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder

    stock = DirectRun(RandomResizedCropRGBImageDecoder((224, 224), scale=MAE_SCALE), photo_beton)
    ours = DirectRun(CropDecodeRGBImageDecoder((224, 224), scale=MAE_SCALE), photo_beton)
    code = ours.code
    scaled_total = 0
    for size in (112, 160, 224):  # one compiled decoder each: output_size changes like between epochs
        for seed in (1, 2):
            expected, _ = stock((size, size), seed)
            images, (_, _, regions) = ours((size, size), seed)
            assert images.shape == (len(expected), size, size, 3) and images.dtype == np.uint8
            unscaled = regions[:, 2] == 1
            # not DCT-scaled: the same pixels as FFCV's full decode, resized with OpenCV's filter (FFCV's
            # resize when enlarging, resample.c when shrinking: rounding differs by 1 level at most)
            assert max_difference(images[unscaled], expected[unscaled]) <= 1
            scaled_total += int((~unscaled).sum())
            per_image = psnr_per_image(images, expected)
            mse = ((images.astype(np.float64) - expected) ** 2).mean()
            overall = 10 * np.log10(255.0**2 / max(mse, 1e-12))
            denominators = {int(d): int((regions[:, 2] == d).sum()) for d in (1, 2, 4, 8)}
            worst = per_image.min()
            print(f"size {size} seed {seed}: PSNR {overall:.1f} dB, worst {worst:.1f} dB, 1/d {denominators}")
            assert overall >= 30 and worst >= 30
    assert ours.code is code
    assert scaled_total > 20  # the DCT-scaled path was exercised


def test_full_decode_area_is_ffcv_stock_and_bicubic_crop_decode_matches_full_decode(photo_beton):
    """``crop_decode=False`` with area interpolation is FFCV's stock decoder, bit for bit (same crops). With
    bicubic, crop decode equals full decode bit for bit where not DCT-scaled (the same pixels, the same
    resampling of the same box), and stays close where scaled."""
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder

    stock = DirectRun(RandomResizedCropRGBImageDecoder((224, 224), scale=MAE_SCALE), photo_beton)
    area = DirectRun(CropDecodeRGBImageDecoder((224, 224), scale=MAE_SCALE, crop_decode=False), photo_beton)
    full = DirectRun(
        CropDecodeRGBImageDecoder((224, 224), scale=MAE_SCALE, interpolation="bicubic", crop_decode=False),
        photo_beton,
    )
    cropped = DirectRun(
        CropDecodeRGBImageDecoder((224, 224), scale=MAE_SCALE, interpolation="bicubic"), photo_beton
    )
    scaled_total = 0
    for size in (112, 224):
        assert np.array_equal(area((size, size), 4)[0], stock((size, size), 4)[0])
        expected, _ = full((size, size), 4)
        assert max_difference(expected, stock((size, size), 4)[0]) > 0  # bicubic is not area
        images, (_, _, regions) = cropped((size, size), 4)
        unscaled = regions[:, 2] == 1
        assert np.array_equal(images[unscaled], expected[unscaled])
        scaled_total += int((~unscaled).sum())
        per_image = psnr_per_image(images, expected)
        print(f"bicubic, size {size}: worst {per_image.min():.1f} dB, scaled {int((~unscaled).sum())}")
        assert per_image.min() >= 30
    assert scaled_total > 10


@pytest.fixture(scope="module")
def flavour_beton(tmp_path_factory):
    """Our own JPEG files of every flavour (and odd/tiny sizes) stored as they are, one per sample."""
    jpegs = [
        flavour_jpeg(flavour, size)
        for flavour in FLAVOURS
        for size in [(131, 97), (8, 8), (509, 487), (300, 197)]
    ]
    return write_beton(tmp_path_factory.mktemp("crop") / "flavours.beton", jpegs, jpeg_bytes=True)


def test_every_jpeg_flavour_through_ffcv(flavour_beton):
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder

    stock = DirectRun(RandomResizedCropRGBImageDecoder((64, 64), scale=(0.08, 1.0)), flavour_beton)
    ours = DirectRun(CropDecodeRGBImageDecoder((64, 64), scale=(0.08, 1.0)), flavour_beton)
    for size in (64, 112):
        expected, _ = stock((size, size), 3)
        images, (_, _, regions) = ours((size, size), 3)
        unscaled = regions[:, 2] == 1
        assert max_difference(images[unscaled], expected[unscaled]) <= 1
        per_image = psnr_per_image(images, expected)
        print(f"flavours, size {size}: worst {per_image.min():.1f} dB, scaled {int((~unscaled).sum())}")
        assert per_image.min() >= 30


def test_raw_samples_take_the_stock_path(tmp_path):
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder

    images = [np.asarray(image) for image, _ in demo_samples(per_photo=1, min_side=40, max_side=90)]
    path = write_beton(tmp_path / "raw.beton", images, mode="raw")
    expected, _ = DirectRun(RandomResizedCropRGBImageDecoder((48, 48)), path)((48, 48), 5)
    got, _ = DirectRun(CropDecodeRGBImageDecoder((48, 48)), path)((48, 48), 5)
    assert np.array_equal(got, expected)


def test_progressive_loader_two_resolutions(photo_beton):
    from mae_trainer.data.resolution import ResolutionSchedule, parse_steps
    from mae_trainer.data.train_loader import ProgressiveLoader

    schedule = ResolutionSchedule(
        kind="steps", resolution=96, mask_ratio=0.75, batch_size=16, steps=parse_steps("0:64,1:96")
    )
    decoder = CropDecodeRGBImageDecoder((64, 64), scale=MAE_SCALE)
    loader = ProgressiveLoader(photo_beton, schedule, num_workers=2, decoder=decoder)
    code = loader.loader.code
    for epoch, resolution in [(0, 64), (1, 96)]:
        batches = list(loader.epoch(epoch))
        assert len(batches) == loader.batches_in_epoch(epoch) > 0
        for batch in batches:
            assert batch.resolution == resolution
            assert batch.images.shape == (16, 3, resolution, resolution) and batch.images.dtype == torch.uint8
            # real photo crops: neither blank nor noise-like constant
            per_image_std = batch.images.float().flatten(1).std(dim=1)
            assert (per_image_std > 2).all()
    assert loader.loader.code is code  # the new output size needed no recompilation
