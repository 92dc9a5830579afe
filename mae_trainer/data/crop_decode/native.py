"""Bindings of the C part (``cropjpeg.c``, ``resample.c``; built by ``setup.py`` as ``_cropjpeg``) and of
FFCV's ``imdecode`` and ``resize`` (its ``_libffcv``) for code compiled by numba inside FFCV's pipeline.

The C functions are bound *by name* (``numba.types.ExternalFunction``), not as ctypes function pointers:
numba embeds a ctypes pointer's address in the machine code, and refuses to cache such code on disk
("uses dynamic globals"). Each function's address is registered with LLVM under a name of ours
(``llvmlite.binding.add_symbol``, done at import, in every process), so the compiled code refers to the
name and links in any process: FFCV's pipeline can come from numba's on-disk cache (``jit_cache.py``).
The functions below are compiled (callable from Python too); the pipeline that calls them is cached
whole, their code included.
"""

from __future__ import annotations

import ctypes
import importlib.util
from ctypes import c_double, c_int, c_int64, c_uint64, c_void_p

import ffcv._libffcv
from llvmlite import binding
from numba import njit, types

# Return codes (cropjpeg.c, resample.c).
OK = 0
CORRUPT = 1  # decoded, but libjpeg warned (corrupt or truncated data); FFCV keeps such images too
ERR_JPEG = -1  # libjpeg gave up on the data
ERR_ARGS = -2  # crop box outside the image, empty box or output size
ERR_BUFFER = -3  # region larger than the scratch buffer
ERR_MEMORY = -4  # malloc failed (resampler)
ERR_SIZE = -5  # the JPEG's size is not the one FFCV's metadata records

REGION_FIELDS = 5  # decoded region: rows, cols, scale denominator, first row, first col (scaled pixels)


def _library_path() -> str:
    # find_spec locates the compiled file under its platform suffix (.cpython-311-x86_64-linux-gnu.so) the
    # way the import system would, editable installs included, without executing it as a module.
    spec = importlib.util.find_spec(f"{__package__}._cropjpeg")
    if spec is None or spec.origin is None:
        raise ImportError(
            "mae_trainer.data.crop_decode._cropjpeg is not built: reinstall the package (pip install -e .), "
            "which compiles it against libjpeg (apt: libjpeg-dev; conda-forge: libjpeg-turbo)"
        )
    return spec.origin


_lib = ctypes.CDLL(_library_path())
_ffcv = ctypes.CDLL(ffcv._libffcv.__file__)

ctypes_crop_decode = _lib.cropjpeg_decode
ctypes_crop_decode.argtypes = [
    c_void_p, c_uint64,  # JPEG bytes
    c_int64, c_int64,  # its expected size (height, width)
    c_int64, c_int64, c_int64, c_int64,  # crop box y, x, h, w (full-scale pixels)
    c_int64, c_int64,  # output size (rows, cols): picks the DCT scale
    c_void_p, c_uint64,  # scratch buffer for the decoded region
    c_void_p,  # int64[REGION_FIELDS] out
]  # fmt: skip
ctypes_crop_decode.restype = c_int

ctypes_resize_area = _lib.cropjpeg_resize_area
ctypes_resize_area.argtypes = [
    c_void_p, c_int64, c_int64,  # source image (rows, cols, 3)
    c_double, c_double, c_double, c_double,  # fractional box y, x, h, w in source pixels
    c_void_p, c_int64, c_int64,  # destination image (rows, cols, 3)
]  # fmt: skip
ctypes_resize_area.restype = c_int

ctypes_resize_bicubic = _lib.cropjpeg_resize_bicubic
ctypes_resize_bicubic.argtypes = ctypes_resize_area.argtypes
ctypes_resize_bicubic.restype = c_int

_set_simd = _lib.cropjpeg_set_simd
_set_simd.argtypes = [c_int]
_set_simd.restype = c_int
_simd = _lib.cropjpeg_simd
_simd.argtypes = []
_simd.restype = c_int

SIMD_LEVELS = ("portable", "sse4.1", "avx2")


def set_simd(level: int = -1) -> int:
    """Vector instructions of the bicubic resampler, for the whole process: 0 portable C, 1 SSE4.1, 2 AVX2;
    a level the CPU lacks, or -1, means the best it has. Every level gives the same bytes. Returns the level
    now in use. Without a call, the first resize reads the environment variable ``MAE_TRAINER_SIMD``."""
    return _set_simd(level)


def simd() -> int:
    """The bicubic resampler's level in use (see :func:`set_simd`)."""
    return _simd()


def _external(name: str, function, signature) -> types.ExternalFunction:
    """``function`` (a ctypes function of a loaded library) callable from numba by the name ``name``."""
    binding.add_symbol(name, ctypes.cast(function, c_void_p).value)
    return types.ExternalFunction(name, signature)


# Pointers are passed as integers (``array.ctypes.data``): the same register as a ``void *``.
_ptr, _i64, _u32, _u8, _f64 = types.uint64, types.int64, types.uint32, types.uint8, types.float64
_c_crop_decode = _external(
    "mae_trainer_cropjpeg_decode", ctypes_crop_decode,
    types.int32(_ptr, types.uint64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _ptr, types.uint64, _ptr),
)  # fmt: skip
_resample_signature = types.int32(_ptr, _i64, _i64, _f64, _f64, _f64, _f64, _ptr, _i64, _i64)
_c_resize_area = _external("mae_trainer_cropjpeg_resize_area", ctypes_resize_area, _resample_signature)
_c_resize_bicubic = _external(
    "mae_trainer_cropjpeg_resize_bicubic", ctypes_resize_bicubic, _resample_signature
)
# FFCV's (ffcv/libffcv.py declares the same argument types): imdecode(source, size, height, width, dst,
# crop_height, crop_width, offset_x, offset_y, scale_num, scale_denom, enable_crop, do_flip) and
# resize(interpolation, source, rows, cols, start_row, end_row, start_col, end_col, dst, rows, cols).
_c_imdecode = _external(
    "mae_trainer_ffcv_imdecode", _ffcv.imdecode,
    types.int32(_ptr, types.uint64, _u32, _u32, _ptr, _u32, _u32, _u32, _u32, _u32, _u32, _u8, _u8),
)  # fmt: skip
_c_resize = _external("mae_trainer_ffcv_resize", _ffcv.resize, types.int32(*(11 * [_i64])))


@njit(nogil=True)
def crop_decode(source, height, width, y, x, h, w, out_h, out_w, scratch, region):
    """Decode crop ``(y, x, h, w)`` of the ``height x width`` JPEG ``source`` (bytes as uint8, to be resized
    to ``out_h x out_w``) into ``scratch`` (uint8, 1-D); ``region`` (int64[5]) receives its geometry.
    Returns a status code."""
    return _c_crop_decode(
        source.ctypes.data, source.size, height, width, y, x, h, w, out_h, out_w,
        scratch.ctypes.data, scratch.size, region.ctypes.data,
    )  # fmt: skip


@njit(nogil=True)
def resize_area(source, y, x, h, w, destination):
    """Area-resample the fractional box ``(y, x, h, w)`` of ``source`` (HWC uint8, contiguous) to fill
    ``destination`` (HWC uint8, contiguous). Returns a status code."""
    return _c_resize_area(
        source.ctypes.data, source.shape[0], source.shape[1], y, x, h, w,
        destination.ctypes.data, destination.shape[0], destination.shape[1],
    )  # fmt: skip


@njit(nogil=True)
def resize_bicubic(source, y, x, h, w, destination):
    """Bicubic-resample (PIL's BICUBIC: Keys a = -0.5, antialiased when shrinking) the fractional box
    ``(y, x, h, w)`` of ``source`` — only the pixels it touches — to fill ``destination`` (both HWC uint8,
    contiguous). Returns a status code."""
    return _c_resize_bicubic(
        source.ctypes.data, source.shape[0], source.shape[1], y, x, h, w,
        destination.ctypes.data, destination.shape[0], destination.shape[1],
    )  # fmt: skip


@njit(nogil=True)
def imdecode(source, destination, height, width):
    """FFCV's full JPEG decode (TurboJPEG) of ``source`` into ``destination`` (``height x width x 3`` bytes
    at its start), as ``ffcv.libffcv.imdecode(source, destination, height, width, height, width, 0, 0, 1,
    1, False, False)``. Returns its status."""
    return _c_imdecode(
        source.ctypes.data, source.size, height, width, destination.ctypes.data,
        height, width, 0, 0, 1, 1, 0, 0,
    )  # fmt: skip


@njit(nogil=True)
def resize_crop(source, start_row, end_row, start_col, end_col, destination):
    """FFCV's resize (OpenCV INTER_AREA) of rows ``start_row:end_row``, columns ``start_col:end_col`` of
    ``source`` to fill ``destination`` (both HWC uint8), as ``ffcv.libffcv.resize_crop``."""
    _c_resize(
        0, source.ctypes.data, source.shape[0], source.shape[1], start_row, end_row, start_col, end_col,
        destination.ctypes.data, destination.shape[0], destination.shape[1],
    )  # fmt: skip
