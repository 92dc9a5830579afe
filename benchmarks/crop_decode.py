"""Crop decode vs FFCV's stock RandomResizedCrop decoder: images/s and host peak RSS.

One jpg .beton of real-photo crops (scikit-image's bundled photos, short side 384–512 px, stored by FFCV's
writer at max side 512, JPEG quality 90), MAE's crop distribution (scale 0.2–1, ratio 3/4–4/3), flip,
uint8 CHW tensors, 2 decode threads. Every measurement runs in a fresh process (so peak RSS is its own): one
warm-up epoch (numba compiles the pipeline then; not timed), then timed epochs. Stock and crop decode
alternate, ``--repeats`` times each; the best rate is reported (``ratio`` = crop decode / stock), and the
median CPU time per image of the whole process (``cpu_ratio`` = stock / crop decode), which other load on
the machine disturbs much less than wall time. One JSON line per output size.

    .venv/bin/python benchmarks/crop_decode.py [--sizes 112,160,224] [--repeats 3] [--epochs 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALE, RATIO = (0.2, 1.0), (3 / 4, 4 / 3)


def build_beton(work: Path, per_photo: int, min_side: int, max_side: int) -> Path:
    import numpy as np
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from mae_trainer.data.demo import demo_samples

    path = work / f"crop_decode_{per_photo}_{min_side}_{max_side}.beton"
    if not path.exists():
        samples = [(np.asarray(image), label) for image, label in demo_samples(per_photo, min_side, max_side)]
        partial = path.with_suffix(".partial")
        fields = {
            "image": RGBImageField(write_mode="jpg", max_resolution=512, jpeg_quality=90),
            "label": IntField(),
        }
        DatasetWriter(str(partial), fields, num_workers=2).from_indexed_dataset(samples, chunksize=32)
        partial.rename(path)
    return path


def cpu_seconds() -> float:
    """CPU time of this process, all threads: unlike wall time, barely affected by other processes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(path: Path, decoder_name: str, size: int, workers: int, batch: int, epochs: int) -> dict:
    """Runs in the child process: warm-up epoch, then ``epochs`` timed epochs."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    from mae_trainer.data.crop_decode import CropDecodeRGBImageDecoder

    decoder_class = (
        CropDecodeRGBImageDecoder if decoder_name == "crop_decode" else RandomResizedCropRGBImageDecoder
    )
    pipelines = {
        "image": [
            decoder_class((size, size), scale=SCALE, ratio=RATIO),
            RandomHorizontalFlip(),
            ToTensor(),
            ToTorchImage(channels_last=False),
        ],
        "label": [IntDecoder(), ToTensor(), Squeeze(1)],
    }
    loader = Loader(
        str(path), batch_size=batch, num_workers=workers, order=OrderOption.RANDOM, seed=0,
        drop_last=True, os_cache=True, pipelines=pipelines,
    )  # fmt: skip
    start = time.perf_counter()
    for _ in loader:
        pass
    first = time.perf_counter() - start
    images, start, cpu = 0, time.perf_counter(), cpu_seconds()
    for _ in range(epochs):
        for batch_images, _labels in loader:
            images += batch_images.shape[0]
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {
        "img_per_s": images / elapsed,
        "cpu_ms_per_img": cpu / images * 1e3,
        "first_epoch_s": first,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(args, decoder_name: str, size: int, path: Path) -> dict:
    command = [
        sys.executable, __file__, "--child", decoder_name, "--beton", str(path), "--sizes", str(size),
        "--workers", str(args.workers), "--batch", str(args.batch), "--epochs", str(args.epochs),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="112,160,224")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per decoder and size")
    parser.add_argument("--per-photo", type=int, default=32, help="images per source photo (16 photos)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mae_trainer_bench")
    parser.add_argument("--child", choices=["stock", "crop_decode"], help=argparse.SUPPRESS)
    parser.add_argument("--beton", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = measure(args.beton, args.child, int(args.sizes), args.workers, args.batch, args.epochs)
        print(json.dumps(result), flush=True)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    path = build_beton(args.work, args.per_photo, 384, 512)
    for size in map(int, args.sizes.split(",")):
        runs: dict[str, list[dict]] = {"stock": [], "crop_decode": []}
        for repeat in range(args.repeats):
            # alternate which one goes first, so slow drifts of the machine hit both alike
            order = ("stock", "crop_decode") if repeat % 2 == 0 else ("crop_decode", "stock")
            for name in order:
                runs[name].append(run_child(args, name, size, path))
        # best of the runs: other load on the machine only ever slows a run down
        rate = {name: max(r["img_per_s"] for r in rs) for name, rs in runs.items()}
        rss = {name: max(r["peak_rss_mib"] for r in rs) for name, rs in runs.items()}
        cpu = {name: statistics.median(r["cpu_ms_per_img"] for r in rs) for name, rs in runs.items()}
        print(
            json.dumps(
                {
                    "benchmark": "crop_decode",
                    "resolution": size,
                    "workers": args.workers,
                    "batch": args.batch,
                    "images": 16 * args.per_photo,
                    "stored_side": "short 384-512, long <= 512 (jpg, q90)",
                    "crop_decode_img_per_s": round(rate["crop_decode"], 1),
                    "stock_img_per_s": round(rate["stock"], 1),
                    "ratio": round(rate["crop_decode"] / rate["stock"], 2),
                    "crop_decode_cpu_ms_per_img": round(cpu["crop_decode"], 3),
                    "stock_cpu_ms_per_img": round(cpu["stock"], 3),
                    "cpu_ratio": round(cpu["stock"] / cpu["crop_decode"], 2),
                    "crop_decode_runs": [round(r["img_per_s"], 1) for r in runs["crop_decode"]],
                    "stock_runs": [round(r["img_per_s"], 1) for r in runs["stock"]],
                    "crop_decode_peak_rss_mib": round(rss["crop_decode"], 1),
                    "stock_peak_rss_mib": round(rss["stock"], 1),
                    "first_epoch_s": {
                        n: round(statistics.median(r["first_epoch_s"] for r in rs), 1)
                        for n, rs in runs.items()
                    },
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
