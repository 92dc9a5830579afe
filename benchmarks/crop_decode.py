"""Crop decode vs FFCV's stock RandomResizedCrop decoder vs the decode-only ceiling: images/s, CPU time
per image, host peak RSS.

ImageNet-like data: one jpg .beton of real-photo crops (scikit-image's bundled photos, rescaled to a long
side of 400–500 px), stored by FFCV's writer with write_mode jpg, max_resolution 500, JPEG quality 90. MAE's
crop distribution (scale 0.2–1, ratio 3/4–4/3), flip, uint8 CHW tensors, 2 decode threads. Variants:

- ``stock``: FFCV's ``RandomResizedCropRGBImageDecoder`` + ``RandomHorizontalFlip`` (full decode, INTER_AREA);
- ``full_bicubic`` / ``full_area``: our seeded decoder (``SeededRandomResizedCrop``), full decode;
- ``crop_bicubic`` / ``crop_area``: the same with ``crop_decode=True``;
- ``decode_only``: FFCV's full decode (its ``imdecode``, TurboJPEG) of every sample into scratch and no
  resize: the ceiling for any full-decode pipeline over the same files, same loader and threads.

Batches end as FFCV's ``ToTorchImage()`` leaves them by default: an NCHW view of the decoder's NHWC buffer,
which is what the training loader hands a GPU (``train_loader.py``: ``ToDevice`` then the view; the layout
copy happens on the device). ``--nchw-copy`` adds the CPU copy to contiguous NCHW that a CPU-only run makes
(``ToTorchImage(channels_last=False)``): the same cost for every variant (about 0.2 ms an image at 192 px
here, with torch's OpenMP threads spinning next to the decode threads), so it lowers every ratio.

Every variant runs in a fresh process, which goes through the sizes as a progressive run does (the output
size changes between epochs, nothing is recompiled): per size one untimed epoch (numba compiles the pipeline
in the first; later ones warm up the new size), then timed epochs. The variants alternate (rotating which
goes first), ``--repeats`` processes each; the best rate is reported (other load on the machine only slows a
run down), the median rate (``X_over_stock_median``), and the median CPU time per image of the whole process
(all threads), which other load disturbs much less than wall time. Peak RSS is per process, over all sizes.
Ratios: ``X_over_stock`` = images/s of X ÷ stock's; ``X_cpu_gain`` = stock's CPU time per image ÷ X's.
One JSON line per output size; ``crop_bicubic_goal`` checks crop decode with bicubic against the goal of
issue 23 (≥ 1.6× stock images/s by the best and by the median rates, within 5 % of crop decode with area),
and ``bicubic_vs_area_cpu_ms`` puts the CPU ms per image of the two filters side by side.

``--per-core``: one decode thread (FFCV's ``num_workers=1``) per process, crop decode, bicubic and area, at
160/192/224 px: decode + crop + resize + flip into the batch buffer, as the training loader does on a GPU
host minus the copy to the device. Without CUDA, torch cannot pin memory, so the batches land in FFCV's
ordinary host buffers. ``img_per_s_one_thread`` is that thread's rate (the main thread, which only hands
batches over, runs on the other core); ``img_per_cpu_s`` = 1000 / CPU ms per image of the whole process: the
images one fully busy core decodes per second, the figure to divide a GPU's images/s by.

    .venv/bin/python benchmarks/crop_decode.py [--sizes 112,160,192,224] [--repeats 4] [--nchw-copy]
    .venv/bin/python benchmarks/crop_decode.py --per-core
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
VARIANTS = ("stock", "full_bicubic", "crop_bicubic", "full_area", "crop_area", "decode_only")
MAX_SIDE = 500


def imagenet_like(per_photo: int, seed: int = 0):
    """Real-photo crops rescaled (PIL bicubic) to a long side uniform in 400–500 px, as ImageNet's bulk."""
    import numpy as np
    from PIL import Image

    from mae_trainer.data.demo import demo_samples

    rng = np.random.default_rng(seed)
    for image, label in demo_samples(per_photo, 300, 400, seed=seed):
        scale = int(rng.integers(400, MAX_SIDE + 1)) / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        yield np.asarray(image.resize(size, Image.BICUBIC)), label


def build_beton(work: Path, per_photo: int) -> Path:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from mae_trainer.publish import publishing

    path = work / f"crop_decode_imagenet_like_{per_photo}.beton"
    if not path.exists():
        fields = {
            "image": RGBImageField(write_mode="jpg", max_resolution=MAX_SIDE, jpeg_quality=90),
            "label": IntField(),
        }
        samples = list(imagenet_like(per_photo))
        with publishing(path) as partial:
            DatasetWriter(str(partial), fields, num_workers=2).from_indexed_dataset(samples, chunksize=32)
    return path


def decode_only_decoder(size: int):
    """An FFCV decoder that fully decodes every JPEG sample (FFCV's own ``imdecode`` call, as its stock
    decoder makes it) into its scratch buffer and resizes nothing: the output stays as allocated."""
    import numpy as np
    from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder
    from ffcv.libffcv import imdecode
    from ffcv.pipeline.compiler import Compiler

    class DecodeOnly(RandomResizedCropRGBImageDecoder):
        def generate_code(self):
            mem_read, my_range = self.memory_read, Compiler.get_iterator()
            imdecode_c, jpg = Compiler.compile(imdecode), IMAGE_MODES["jpg"]

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, scratch = my_storage
                for dst_ix in my_range(len(batch_indices)):
                    field = metadata[batch_indices[dst_ix]]
                    data = mem_read(field["data_ptr"], storage_state)
                    height, width = np.uint32(field["height"]), np.uint32(field["width"])
                    if field["mode"] == jpg:
                        imdecode_c(
                            data, scratch[dst_ix], height, width, height, width, 0, 0, 1, 1, False, False
                        )
                    destination[dst_ix, 0, 0, 0] = scratch[dst_ix, 0]  # keep the decode observable
                return destination[: len(batch_indices)]

            decode.is_parallel = True
            return decode

    return DecodeOnly((size, size), scale=SCALE, ratio=RATIO)


def image_pipeline(variant: str, size: int) -> list:
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.transforms import RandomHorizontalFlip

    from mae_trainer.data.augment import SeededRandomResizedCrop

    if variant == "stock":
        return [
            RandomResizedCropRGBImageDecoder((size, size), scale=SCALE, ratio=RATIO),
            RandomHorizontalFlip(),
        ]
    if variant == "decode_only":
        return [decode_only_decoder(size)]
    decode, interpolation = variant.split("_")
    crop = SeededRandomResizedCrop(
        (size, size), scale=SCALE, ratio=RATIO, crop_decode=decode == "crop", interpolation=interpolation
    )
    return [crop]


def cpu_seconds() -> float:
    """CPU time of this process, all threads: unlike wall time, barely affected by other processes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(
    path: Path, variant: str, sizes: list[int], workers: int, batch: int, epochs: int, nchw_copy: bool
) -> dict:
    """Runs in the child process: for each size (set between epochs, as a progressive run does, without
    recompiling), one untimed epoch and then ``epochs`` timed epochs. Results per size."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor, ToTorchImage

    pipelines = {
        "image": [*image_pipeline(variant, sizes[0]), ToTensor(), ToTorchImage(channels_last=not nchw_copy)],
        "label": [IntDecoder(), ToTensor(), Squeeze(1)],
    }
    loader = Loader(
        str(path), batch_size=batch, num_workers=workers, order=OrderOption.RANDOM, seed=0,
        drop_last=True, os_cache=True, pipelines=pipelines,
    )  # fmt: skip
    results = {}
    for size in sizes:
        loader.pipeline_specs["image"].decoder.output_size = (size, size)
        start = time.perf_counter()
        for _ in loader:  # the first one compiles the pipeline (numba), later ones warm up the new size
            pass
        first = time.perf_counter() - start
        images, start, cpu = 0, time.perf_counter(), cpu_seconds()
        for _ in range(epochs):
            for batch_images, _labels in loader:
                assert batch_images.shape[-1] == size
                images += batch_images.shape[0]
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        results[size] = {
            "img_per_s": images / elapsed,
            "cpu_ms_per_img": cpu / images * 1e3,
            "first_epoch_s": first,
        }
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def run_child(args, variant: str, path: Path) -> dict:
    command = [
        sys.executable, __file__, "--child", variant, "--beton", str(path), "--sizes", args.sizes,
        "--workers", str(args.workers), "--batch", str(args.batch), "--epochs", str(args.epochs),
        *(["--nchw-copy"] if args.nchw_copy else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="112,160,192,224")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per process")
    parser.add_argument("--repeats", type=int, default=4, help="processes per variant and size")
    parser.add_argument("--per-photo", type=int, default=32, help="images per source photo (16 photos)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mae_trainer_bench")
    parser.add_argument("--nchw-copy", action="store_true", help="copy batches to NCHW on the CPU")
    parser.add_argument("--per-core", action="store_true", help="1 decode thread: images/s per CPU core")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--beton", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sizes = [int(size) for size in args.sizes.split(",")]
        result = measure(args.beton, args.child, sizes, args.workers, args.batch, args.epochs, args.nchw_copy)
        print(json.dumps(result), flush=True)
        return

    if args.per_core:
        args.workers = 1
        if args.sizes == parser.get_default("sizes"):
            args.sizes = "160,192,224"
        if args.variants == parser.get_default("variants"):
            args.variants = "crop_bicubic,crop_area"
    args.work.mkdir(parents=True, exist_ok=True)
    path = build_beton(args.work, args.per_photo)
    variants = args.variants.split(",")
    processes: dict[str, list[dict]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        # rotate which one goes first, so slow drifts of the machine hit all alike
        shift = repeat % len(variants)
        for name in variants[shift:] + variants[:shift]:
            processes[name].append(run_child(args, name, path))
    for size in map(int, args.sizes.split(",")):
        runs = {name: [result[str(size)] for result in results] for name, results in processes.items()}
        rate = {name: max(r["img_per_s"] for r in rs) for name, rs in runs.items()}
        median = {name: statistics.median(r["img_per_s"] for r in rs) for name, rs in runs.items()}
        cpu = {name: statistics.median(r["cpu_ms_per_img"] for r in rs) for name, rs in runs.items()}
        line = {
            "benchmark": "crop_decode",
            "resolution": size,
            "workers": args.workers,
            "batch": args.batch,
            "images": 16 * args.per_photo,
            "stored": f"jpg q90, long side 400-{MAX_SIDE}",
            "batch_layout": "NCHW copy on the CPU" if args.nchw_copy else "NHWC buffer, NCHW view",
            "img_per_s": {name: round(value, 1) for name, value in rate.items()},
            "cpu_ms_per_img": {name: round(value, 3) for name, value in cpu.items()},
        }
        if "stock" in runs:
            for name in variants:
                if name != "stock":
                    line[f"{name}_over_stock"] = round(rate[name] / rate["stock"], 2)
                    line[f"{name}_over_stock_median"] = round(median[name] / median["stock"], 2)
                    line[f"{name}_cpu_gain"] = round(cpu["stock"] / cpu[name], 2)
        for decode in ("full", "crop"):  # what bicubic costs against area
            if f"{decode}_area" in runs and f"{decode}_bicubic" in runs:
                line[f"{decode}_bicubic_over_area"] = round(
                    rate[f"{decode}_bicubic"] / rate[f"{decode}_area"], 2
                )
                cpu_ratio = cpu[f"{decode}_area"] / cpu[f"{decode}_bicubic"]
                line[f"{decode}_bicubic_cpu_gain_over_area"] = round(cpu_ratio, 2)
        if "crop_bicubic" in runs and "crop_area" in runs:
            line["bicubic_vs_area_cpu_ms"] = {
                decode: [round(cpu[f"{decode}_bicubic"], 3), round(cpu[f"{decode}_area"], 3)]
                for decode in ("crop", "full")
                if f"{decode}_bicubic" in runs and f"{decode}_area" in runs
            }
            if "stock" in runs:
                over_stock = rate["crop_bicubic"] / rate["stock"]
                over_stock_median = median["crop_bicubic"] / median["stock"]
                over_area = rate["crop_bicubic"] / rate["crop_area"]
                line["crop_bicubic_goal"] = {
                    "over_stock": round(over_stock, 2),
                    "over_stock_median": round(over_stock_median, 2),
                    "over_area": round(over_area, 3),
                    "met": min(over_stock, over_stock_median) >= 1.6 and over_area >= 0.95,
                }
        if args.per_core:
            line["benchmark"] = "crop_decode_per_core"
            line["pinned_memory"] = False  # no CUDA here: torch cannot pin host memory
            line["img_per_s_one_thread"] = line.pop("img_per_s")
            line["img_per_cpu_s"] = {name: round(1e3 / value, 1) for name, value in cpu.items()}
        line["runs_img_per_s"] = {name: [round(r["img_per_s"], 1) for r in rs] for name, rs in runs.items()}
        line["peak_rss_mib_all_sizes"] = {
            name: round(max(r["peak_rss_mib"] for r in results), 1) for name, results in processes.items()
        }
        line["first_epoch_s"] = {
            name: round(statistics.median(r["first_epoch_s"] for r in rs), 1) for name, rs in runs.items()
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
