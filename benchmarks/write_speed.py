"""``write-dataset``'s writer ÷ FFCV's own ``DatasetWriter``, and the writer's memory at 10× the images.

Speed: the same ~1000 real-photo JPEGs (scikit-image's bundled photos, short side 300–400 px, long side
≤ 500, q90) written by :func:`write_beton` (every image checked, EXIF-oriented, converted to RGB and
resized in the pass that writes it) and by FFCV's ``DatasetWriter`` in its standard usage (a torch-style
dataset of ``(PIL image, label)``, ``RGBImageField(write_mode="jpg", max_resolution=500, jpeg_quality=90)``
+ ``IntField``), same workers, best of ``--repeats`` alternated runs with a warm page cache. One JSON line:
both images/s, ``ratio`` (ours ÷ FFCV's), ms per image per core (wall ms × workers), CPU ms per image of
the writer and its workers and ``cpu_ratio`` (FFCV's ÷ ours: steadier than wall time on a busy machine),
output sizes.

Memory (``--memory``): peak PSS (and RSS) of the writing process plus its FFCV workers, summed (RSS counts
the pages they share once per process, PSS splits them), sampled every 0.2 s while :func:`write_beton`
writes ``--small`` then ``--large`` synthetic 64×64 images (seeded noise made on the fly, nothing held in
memory), each write in a fresh process. One JSON line with both peaks and their ratios.

    .venv/bin/python benchmarks/write_speed.py [--workers 2] [--repeats 3] [--memory] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _photos import photo_folder
from PIL import Image

from mae_trainer.data.sources import ImageSource, image_folder_source
from mae_trainer.data.write import WriteSettings, write_beton


class PlainDataset:
    """What FFCV's documentation writes: an indexable dataset of ``(PIL image, label)``."""

    def __init__(self, paths: list[Path], labels: list[int]):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return Image.open(self.paths[index]).convert("RGB"), self.labels[index]


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (FFCV's workers, reaped first)."""
    import multiprocessing
    import resource

    while multiprocessing.active_children():  # joins the workers that have ended
        time.sleep(0.01)
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def timed(write, folder: Path, output: Path, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the writer and its workers) of one write."""
    cpu = cpu_seconds()
    wall = write(folder, output, workers)
    return wall, cpu_seconds() - cpu


def write_ffcv(folder: Path, output: Path, workers: int) -> float:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    source = image_folder_source(folder)
    dataset = PlainDataset(source.paths, source.labels)
    fields = {
        "image": RGBImageField(write_mode="jpg", max_resolution=500, jpeg_quality=90),
        "label": IntField(),
    }
    start = time.perf_counter()
    DatasetWriter(str(output), fields, num_workers=workers).from_indexed_dataset(dataset, chunksize=64)
    return time.perf_counter() - start


def write_ours(folder: Path, output: Path, workers: int) -> float:
    settings = WriteSettings(max_resolution=500, write_mode="jpg", jpeg_quality=90, num_workers=workers)
    source = image_folder_source(folder)  # listed before the clock starts, as for FFCV's dataset
    start = time.perf_counter()
    write_beton(source, output, settings, overwrite=True)
    return time.perf_counter() - start


def speed(work: Path, workers: int, repeats: int) -> dict:
    folder = photo_folder(work, per_photo=63, min_side=300, max_side=400, max_resolution=500)
    paths = sorted(folder.rglob("*.jpg"))
    for path in paths:  # warm the page cache for both
        path.read_bytes()
    times = {"ours": [], "ffcv": []}
    cpus = {"ours": [], "ffcv": []}
    writers = {"ours": write_ours, "ffcv": write_ffcv}
    outputs = {"ours": work / "ours.beton", "ffcv": work / "ffcv.beton"}
    for _ in range(repeats):
        for name in ("ffcv", "ours"):
            outputs[name].unlink(missing_ok=True)
            wall, cpu = timed(writers[name], folder, outputs[name], workers)
            times[name].append(wall)
            cpus[name].append(cpu)
    rates = {name: len(paths) / min(seconds) for name, seconds in times.items()}
    cpu_ms = {name: min(seconds) * 1e3 / len(paths) for name, seconds in cpus.items()}
    return {
        "benchmark": "write_speed",
        "images": len(paths),
        "workers": workers,
        "ours_images_per_s": round(rates["ours"], 1),
        "ffcv_images_per_s": round(rates["ffcv"], 1),
        "ratio": round(rates["ours"] / rates["ffcv"], 3),
        "ours_ms_per_image_per_core": round(workers * 1e3 / rates["ours"], 2),
        "ffcv_ms_per_image_per_core": round(workers * 1e3 / rates["ffcv"], 2),
        "ours_cpu_ms_per_image": round(cpu_ms["ours"], 2),
        "ffcv_cpu_ms_per_image": round(cpu_ms["ffcv"], 2),
        "cpu_ratio": round(cpu_ms["ffcv"] / cpu_ms["ours"], 3),
        # projections for ImageNet-1k's 1,281,167 training images, if they cost what these do
        "imagenet_1k_core_hours_projected_wall": round(1_281_167 * workers / rates["ours"] / 3600, 2),
        "imagenet_1k_core_hours_projected_cpu": round(1_281_167 * cpu_ms["ours"] / 1e3 / 3600, 2),
        "ours_mib": round(outputs["ours"].stat().st_size / 2**20, 2),
        "ffcv_mib": round(outputs["ffcv"].stat().st_size / 2**20, 2),
        "seconds": {name: [round(s, 2) for s in seconds] for name, seconds in times.items()},
    }


class SyntheticSource(ImageSource):
    """``count`` 64×64 images of seeded noise, made when opened (nothing held per image but its label)."""

    def __init__(self, count: int):
        super().__init__("synthetic", [f"c{i}" for i in range(10)], [i % 10 for i in range(count)])

    def open(self, item: int) -> Image.Image:
        rng = np.random.default_rng(item)
        return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def tree_memory() -> tuple[int, int]:
    """(RSS, PSS) summed over this process and its children: RSS counts the pages the forked workers share
    with it once per process, PSS splits them among the processes sharing them (their real total)."""
    import psutil

    me = psutil.Process()
    rss = pss = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def memory_child(count: int, work: Path, workers: int) -> None:
    peak, stop = [(0, 0)], threading.Event()

    def sample():
        while True:
            now = tree_memory()
            peak[0] = (max(peak[0][0], now[0]), max(peak[0][1], now[1]))
            if stop.wait(0.2):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    output = work / f"synthetic_{count}.beton"
    summary = write_beton(SyntheticSource(count), output, WriteSettings(num_workers=workers), overwrite=True)
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    output.unlink()
    rss, pss = peak[0]
    line = {"count": summary["count"], "rss_mib": rss / 2**20, "pss_mib": pss / 2**20, "seconds": seconds}
    print(json.dumps(line))


def memory(work: Path, workers: int, small: int, large: int) -> dict:
    results = {}
    for count in (small, large):
        run = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(count),
                "--work",
                str(work),
                "--workers",
                str(workers),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        results[count] = json.loads(run.stdout.strip().splitlines()[-1])
    a, b = results[small], results[large]
    return {
        "benchmark": "write_memory",
        "workers": workers,
        "images": [small, large],
        "peak_pss_mib": [round(a["pss_mib"], 1), round(b["pss_mib"], 1)],
        "pss_ratio": round(b["pss_mib"] / a["pss_mib"], 3),
        "peak_rss_sum_mib": [round(a["rss_mib"], 1), round(b["rss_mib"], 1)],
        "rss_ratio": round(b["rss_mib"] / a["rss_mib"], 3),
        "images_per_s": [round(small / a["seconds"], 1), round(large / b["seconds"], 1)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--memory", action="store_true", help="also measure memory at --small vs --large images"
    )
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="write_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.memory_child is not None:
        memory_child(args.memory_child, work, args.workers)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.memory_only:
        print(json.dumps(speed(work, args.workers, args.repeats)), flush=True)
    if args.memory or args.memory_only:
        print(json.dumps(memory(work, args.workers, args.small, args.large)), flush=True)


if __name__ == "__main__":
    main()
