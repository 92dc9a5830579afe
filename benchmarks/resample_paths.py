"""The bicubic resampler alone, per vector path: ms per call on ImageNet-like boxes, against area.

Calls ``cropjpeg_resize_bicubic`` through ctypes on a random 400×500 RGB image, for a few (box, output)
pairs of the sizes crop decode hands it (DCT scaling keeps shrink factors below 2 there), at each SIMD
level this CPU has (0 portable C, 1 SSE4.1, 2 AVX2), and ``cropjpeg_resize_area`` on the same box.
``--before LIB``: also the bicubic of another build of the library (e.g. the float resampler of ``main``:
``gcc -O3 -fwrapv -shared -fPIC -o /tmp/old.so cropjpeg.c resample.c -ljpeg -lm`` from its sources).
One JSON line per case; ratios are ``area`` or ``before`` ms ÷ the path's ms.

    .venv/bin/python benchmarks/resample_paths.py [--before /tmp/old.so] [--calls 300]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from ctypes import c_double, c_int64, c_void_p

import numpy as np

from mae_trainer.data.crop_decode import native

ARGTYPES = [c_void_p, c_int64, c_int64, c_double, c_double, c_double, c_double, c_void_p, c_int64, c_int64]
CASES = [  # (y, x, h, w), (out_h, out_w)
    ((10.5, 3.25, 300, 400), (224, 224)),
    ((0, 0, 200, 250), (224, 224)),
    ((1.5, 2.5, 330, 330), (160, 160)),
    ((0.5, 0, 150, 180), (112, 112)),
    ((0, 0, 150, 180), (192, 192)),
]


def ms_per_call(function, image: np.ndarray, box, out, calls: int) -> float:
    destination = np.zeros((*out, 3), np.uint8)
    arguments = (image.ctypes.data, *image.shape[:2], *box, destination.ctypes.data, *out)
    function(*arguments)
    start = time.perf_counter()
    for _ in range(calls):
        function(*arguments)
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another build of the library, its bicubic timed too")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 256, (400, 500, 3), np.uint8)
    before = None
    if args.before:
        before = ctypes.CDLL(args.before).cropjpeg_resize_bicubic
        before.argtypes = ARGTYPES
    best = native.set_simd(-1)
    try:
        for box, out in CASES:
            line = {"benchmark": "resample_paths", "box": box, "out": out, "ms": {}}
            for level in range(best + 1):
                native.set_simd(level)
                line["ms"][native.SIMD_LEVELS[level]] = ms_per_call(
                    native.ctypes_resize_bicubic, image, box, out, args.calls
                )
            line["ms"]["area"] = ms_per_call(native.ctypes_resize_area, image, box, out, args.calls)
            if before is not None:
                line["ms"]["before"] = ms_per_call(before, image, box, out, args.calls)
            ms = line["ms"]
            for reference in ("area", "before"):
                if reference in ms:
                    line[f"{reference}_over"] = {
                        name: round(ms[reference] / ms[name], 2) for name in native.SIMD_LEVELS[: best + 1]
                    }
            line["ms"] = {name: round(value, 3) for name, value in ms.items()}
            print(json.dumps(line), flush=True)
    finally:
        native.set_simd(-1)


if __name__ == "__main__":
    main()
